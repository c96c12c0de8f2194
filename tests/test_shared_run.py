"""A run shared by the job and an assistant on one luigid, started from exactly the files in deploy/: it ends
soon after its last task settles, and the job's exit code and stdout are the run's, whoever ran what."""

import json
import sqlite3
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import luigi.configuration
import pytest

from pipeline.runlog_engines import engine_for
from tests.fixtures import HEADER_IPF, csv_bytes, quoted_rows
from tests.harness import COMMAND, PROJECT_CFG, Site, project_cfg_lines, query
from tests.loopback_server import LoopbackServer
from tests.luigid_support import Luigid, finish, start_client, stop_client

pytestmark = pytest.mark.integration

DEPLOY = PROJECT_CFG.parent / "deploy"
DEPLOYED_RUNLOG = "url = postgresql://cms@db.example.org:5432/cms_runlog"
END_BOUND = 15.0  # seconds from the run's last task settling to the job's exit (wait_interval + wait_jitter + slack)


@contextmanager
def deployed(tmp_path: Path, latency: float):
    """luigid started from deploy/luigid.cfg, and a loopback CMS site answering after `latency` seconds."""
    with (
        Luigid(tmp_path / "luigid", (DEPLOY / "luigid.cfg").read_text(encoding="utf-8")) as luigid,
        LoopbackServer(latency=latency) as server,
    ):
        yield luigid, Site(server)


def host_folder(root: Path, name: str, site: Site, data_dir: Path, luigid: Luigid) -> Path:
    """A machine's project folder: the shipped luigi.cfg (pointed at the loopback catalog and the shared data
    folder) and deploy/central.cfg with only luigid's address changed."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "luigi.cfg").write_text(
        "\n".join(project_cfg_lines(site, data_dir=str(data_dir))) + "\n", encoding="utf-8"
    )
    central = (DEPLOY / "central.cfg").read_text(encoding="utf-8")
    assert "scheduler_port = 8082\n" in central
    central = central.replace("scheduler_port = 8082", f"scheduler_port = {luigid.port}")
    (folder / "central.cfg").write_text(with_runlog_url(central), encoding="utf-8")
    return folder


def with_runlog_url(central: str, runlog_url: str | None = None) -> str:
    """deploy/central.cfg's [runlog] url replaced by the test's (tests/conftest.py: runlog_engine; empty for
    SQLite in the data folder)."""
    if runlog_url is None:
        runlog_url = luigi.configuration.get_config().get("runlog", "url", "")
    assert f"\n{DEPLOYED_RUNLOG}\n" in central
    return central.replace(DEPLOYED_RUNLOG, f"url = {runlog_url}")


def two_hosts(tmp_path: Path, site: Site, luigid: Luigid) -> tuple[Path, Path, Path]:
    """(the shared data folder, the job's folder, the assistant's folder)."""
    data_dir = tmp_path / "shared-data"
    return data_dir, *(host_folder(tmp_path, name, site, data_dir, luigid) for name in ("host-a", "host-b"))


def start_shared_run(folder: Path, run_id: str, workers: int, log_name: str = "out.log"):
    """`python -m pipeline.shared_run` as a host folder's cron line runs it, with its central.cfg."""
    args = [sys.executable, "-m", "pipeline.shared_run", "--workers", str(workers), "--run-id", run_id]
    return start_client(args, folder / "central.cfg", folder, log_name)


def start_assistant(folder: Path, workers: int = 2):
    """`python -m pipeline.assistant` as a helper machine's service runs it, with its central.cfg."""
    args = [sys.executable, "-m", "pipeline.assistant", "--workers", str(workers)]
    return start_client(args, folder / "central.cfg", folder, "out.log")


def serve(site: Site, count: int, missing: int = 0) -> list[str]:
    paths = []
    for n in range(count):
        body = csv_bytes(HEADER_IPF, quoted_rows(4, 4, f"{n}"))
        paths += site.dataset(f"ds{n:02d}-test", "2025-04-08", {f"File{n}.csv": body}, serve=n >= missing)
    return paths


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_shared_run_exits_with_the_runs_code_and_prints_its_summary(tmp_path, outcome, runlog_engine):
    with deployed(tmp_path, latency=0.3) as (luigid, site):
        paths = serve(site, 8, missing=2 if outcome == "failed" else 0)
        data_dir, job_folder, helper_folder = two_hosts(tmp_path, site, luigid)
        job, job_log = start_shared_run(job_folder, "shared", workers=2)
        assistant, _ = start_assistant(helper_folder)
        try:
            code = finish(job, timeout=120)
            ended = time.time()
            settle = time.monotonic() + 10  # the assistant may still be reporting the task that closed the run
            while luigid.tasks("RUNNING") and time.monotonic() < settle:
                time.sleep(0.1)
            done = luigid.tasks("DONE").values()
            everything = luigid.tasks()
        finally:
            stop_client(assistant)
    out = job_log.read_text(encoding="utf-8", errors="replace")
    [(status, finished_at)] = query(data_dir, "SELECT status, finished_at FROM runs")
    assert status == outcome, out
    assert code == (0 if outcome == "succeeded" else 30), out
    assert f"HospitalsDaily run shared {outcome}: 8 discovered" in out  # on the job's stdout, whoever closed
    assert out.count("HospitalsDaily run shared") == 1
    if outcome == "failed":
        assert out.count("  FAILED ds0") == 2 and "HTTP 404" in out
    # luigid's finished_at has second resolution: allow for it.
    assert ended - datetime.fromisoformat(finished_at).timestamp() < END_BOUND + 1, out
    # Every finished task shows its final figures in the UI: downloads their full size, normalizing its rows.
    downloads = [t for t in done if t["name"] == "DownloadCsv"]
    normalized = [t for t in done if t["name"] == "NormalizeCsv"]
    assert len(downloads) == len(normalized) == len(paths) - (2 if outcome == "failed" else 0)
    for task in downloads:
        size = task["status_message"].split(" MB")[0]
        assert (task["status_message"], task["progress_percentage"]) == (f"{size} MB of {size} MB", 100), task
    assert {(t["status_message"], t["progress_percentage"]) for t in normalized} == {("4 rows", 100)}
    [wrapper] = [t for t in everything.values() if t["name"] == "HospitalsDaily"]
    failed = 2 if outcome == "failed" else 0
    assert (wrapper["status_message"], wrapper["progress_percentage"]) == (
        f"{8 - failed} done, {failed} failed of 8 CSV versions",
        100,
    )
    report = json.loads((data_dir / "reports" / "shared.json").read_text(encoding="utf-8"))
    assert report["status"] == outcome


def test_a_second_copy_with_the_same_run_id_is_refused_at_once(tmp_path, runlog_engine):
    with deployed(tmp_path, latency=1.0) as (luigid, site):
        serve(site, 4)
        data_dir = tmp_path / "shared-data"
        folder = host_folder(tmp_path, "host-a", site, data_dir, luigid)
        first, first_log = start_shared_run(folder, "twice", workers=1, log_name="first.log")
        deadline = time.monotonic() + 30
        while not query_runs(data_dir, runlog_engine):
            assert time.monotonic() < deadline and first.poll() is None, first_log.read_text(encoding="utf-8")
            time.sleep(0.1)
        started = time.monotonic()
        second, second_log = start_shared_run(folder, "twice", workers=1, log_name="second.log")
        second_code = finish(second, timeout=60)
        refused_in = time.monotonic() - started
        first_code = finish(first, timeout=120)
    second_out = second_log.read_text(encoding="utf-8")
    assert second_code == 10 and refused_in < 10, second_out
    assert "run twice is already running" in second_out
    assert first_code == 0, first_log.read_text(encoding="utf-8")
    assert query(data_dir, "SELECT status FROM runs") == [("succeeded",)]


def query_runs(data_dir: Path, runlog_url: str) -> list:
    if not runlog_url and not (data_dir / "runlog.sqlite").exists():  # connecting would create it
        return []
    try:
        with engine_for(runlog_url, data_dir / "runlog.sqlite").read_only() as db:  # PostgreSQL: None before
            return db.execute("SELECT run_id FROM runs").fetchall() if db is not None else []  # its tables exist
    except sqlite3.OperationalError:  # the job has created the file but not yet its tables
        return []


def test_the_shipped_cron_line_and_windows_file_run_the_tested_command():
    command = " ".join(COMMAND[1:])
    [cron] = [
        line
        for line in (DEPLOY / "crontab").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert f"cd /opt/cms-hospitals && .venv/bin/luigi {command} " in cron
    cmd = (DEPLOY / "run-daily.cmd").read_bytes().decode("utf-8")  # as is: cmd.exe wants CRLF
    assert "\r\n" in cmd and "cd /d C:\\cms-hospitals\r\n" in cmd
    assert f".venv\\Scripts\\luigi.exe {command} " in cmd and "exit /b %ERRORLEVEL%" in cmd
    for unit in ("luigid.service", "cms-hospitals-assistant.service"):
        text = (DEPLOY / unit).read_text(encoding="utf-8")
        assert "WorkingDirectory=/opt/cms-hospitals" in text and "LUIGI_CONFIG_PATH=/opt/cms-hospitals/deploy/" in text
    assert "python -m pipeline.assistant --workers 4" in (DEPLOY / "cms-hospitals-assistant.service").read_text(
        encoding="utf-8"
    )
