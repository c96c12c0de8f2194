"""The README's command, exactly as a user or cron runs it, in a folder holding only luigi.cfg."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import CATALOG_PATH, Site, query
from tests.loopback_server import LoopbackServer

PROJECT_CFG = Path(__file__).resolve().parent.parent / "luigi.cfg"
COMMAND = ["luigi", "--module", "pipeline", "HospitalsDaily", "--workers", "8"]


def luigi_executable() -> str:
    found = shutil.which("luigi", path=str(Path(sys.executable).parent))
    assert found, "the luigi console script is installed beside this Python"
    return found


def project_cfg_for(site: Site) -> str:
    """The shipped luigi.cfg, pointed at the loopback catalog."""
    lines = PROJECT_CFG.read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("metastore_url = https://data.cms.gov/") for line in lines)
    return "\n".join(f"metastore_url = {site.metastore_url}" if line.startswith("metastore_url") else line
                     for line in lines) + "\n"


@pytest.fixture
def site():
    with LoopbackServer() as server:
        yield Site(server)


def run_command(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([luigi_executable(), *COMMAND[1:]], cwd=folder, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_readme_command_runs_the_job_and_exit_codes_follow_failures(site, tmp_path):
    (tmp_path / "luigi.cfg").write_text(project_cfg_for(site), encoding="utf-8")
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
