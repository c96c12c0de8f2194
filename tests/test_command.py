"""The README's command, exactly as a user or cron runs it, in a folder holding only luigi.cfg."""

import subprocess

import pytest

from pipeline import HospitalsDaily
from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import CATALOG_PATH, Site, command, query, run_command, write_project_cfg
from tests.loopback_server import LoopbackServer
from tests.luigid_support import free_port, loopback_env

pytestmark = pytest.mark.integration


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


def test_started_where_there_is_no_luigi_cfg_it_says_so_in_one_line(tmp_path):
    result = run_command(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pipeline: no luigi.cfg with [HospitalsDaily] metastore_url was found (looked in {tmp_path / 'luigi.cfg'});"
        " run the command from the project folder (cd /path/to/project) or set LUIGI_CONFIG_PATH to its luigi.cfg"
    ]
    assert not (tmp_path / "data").exists()


def test_a_dead_central_scheduler_is_one_line_and_exit_40(site, tmp_path):
    write_project_cfg(site, tmp_path)
    port = free_port()  # nothing listens there
    (tmp_path / "central.cfg").write_text(
        f"[core]\nlocal_scheduler = false\nscheduler_url = http://127.0.0.1:{port}\n"
        "rpc_retry_attempts = 1\nrpc_retry_wait = 1\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        command(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=loopback_env(tmp_path / "central.cfg"),
    )
    assert result.returncode == 40  # [retcode] unhandled_exception
    assert "Traceback" not in result.stderr
    assert (
        f"cannot reach the central scheduler: Errors (1 attempts) when connecting to remote scheduler "
        f"'http://127.0.0.1:{port}' (ConnectionRefusedError: " in result.stderr
    )
    assert "is luigid running?" in result.stderr
    assert site.server.count() == 0


URL_REFUSALS = {
    "gs://cms/hospitals": "pipeline: data_dir gs://cms/hospitals is a URL (gs://) the job cannot write to: give a "
    "local (or mounted) folder path, or s3://bucket/prefix for S3-compatible object storage",
    "s3://cms/hospitals": "pipeline: data_dir s3://cms/hospitals is in object storage, where the run log cannot "
    "live: give it with --runlog-url (or [runlog] url): postgresql://... for several machines, "
    "sqlite:///path/runlog.sqlite for one",
    "s3://C/x": "pipeline: data_dir s3://C/x does not name a bucket: write it as s3://bucket/prefix",
}


@pytest.mark.parametrize(
    "where, url",
    [
        ("--data-dir", "s3://cms/hospitals"),
        ("--HospitalsDaily-data-dir=", "s3://cms/hospitals"),
        ("luigi.cfg", "s3://cms/hospitals"),
        ("--data-dir", "gs://cms/hospitals"),
        ("luigi.cfg", "gs://cms/hospitals"),
        ("--data-dir", "s3://C/x"),
    ],
)
def test_a_data_folder_url_that_cannot_be_used_is_refused_in_one_line_not_taken_as_a_folder(site, tmp_path, where, url):
    write_project_cfg(site, tmp_path)
    site.dataset("48nr-hqxx", "2025-04-08", {"OAS.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(5, 5))})
    if where == "luigi.cfg":
        cfg = tmp_path / "luigi.cfg"
        cfg.write_text(cfg.read_text(encoding="utf-8").replace("data_dir = data", f"data_dir = {url}"))
        extra: tuple[str, ...] = ()
    else:
        extra = (f"{where}{url}",) if where.endswith("=") else (where, url)
    result = run_command(tmp_path, *extra)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [URL_REFUSALS[url]]
    assert site.server.count() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["luigi.cfg"]  # no folder named s3:, no data


def test_a_url_for_the_data_folder_is_refused_through_the_python_api_too(site, tmp_path):
    with pytest.raises(ValueError, match=r"data_dir gs://b/p is a URL \(gs://\) the job cannot write to"):
        HospitalsDaily(data_dir="gs://b/p", metastore_url=site.metastore_url)
