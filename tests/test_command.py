"""The README's command, exactly as a user or cron runs it, in a folder holding only luigi.cfg."""

import pytest

from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import CATALOG_PATH, Site, query, run_command, write_project_cfg
from tests.loopback_server import LoopbackServer


@pytest.fixture
def site():
    with LoopbackServer() as server:
        yield Site(server)


def test_readme_command_runs_the_job_and_exit_codes_follow_failures(site, tmp_path):
    write_project_cfg(site, tmp_path)
    site.dataset("48nr-hqxx", "2025-04-08", {"OAS.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(5, 5))})

    first = run_command(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "HospitalsDaily run" in first.stdout and "1 downloaded" in first.stdout
    assert query(tmp_path / "data", "SELECT status, downloaded FROM runs") == [("succeeded", 1)]

    site.dataset("77hc-ibv8", "2025-04-08", {"HAI.csv": b""}, serve=False)
    second = run_command(tmp_path)
    assert second.returncode == 30, second.stderr  # [retcode] task_failed
    assert "FAILED 77hc-ibv8" in second.stdout and "HTTP 404" in second.stdout

    site.server.add(CATALOG_PATH, b"{}", content_type="application/json")
    third = run_command(tmp_path)
    assert third.returncode == 30, third.stderr
    assert "not a JSON array" in third.stderr
