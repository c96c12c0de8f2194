"""A shared run fails the way a single run does (issue 28): through the real commands, with a real luigid
(deploy/luigid.cfg), the run log on PostgreSQL, the data in a SeaweedFS bucket (deploy/central.cfg's lines
uncommented), an SMTP server, a ping endpoint and an assistant. Each case checks the exit code, the time to exit,
the lines printed, the run-log row, the mails and pings received and luigid's own task counts."""

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.runlog_engines import engine_for
from tests.harness import Site, console_script, project_cfg_lines
from tests.loopback_server import LoopbackServer
from tests.luigid_support import Luigid, finish, free_port, loopback_env, stop_client
from tests.notify_support import MailServer, PingServer, notify_cfg, text
from tests.test_shared_run import DEPLOY, END_BOUND, serve, start_assistant, start_shared_run, with_runlog_url

pytestmark = pytest.mark.integration

BUCKET_LINES = "# [HospitalsDaily]\n# data_dir = s3://cms-data/hospitals\n"
# The catalog's retries made short: an unreachable catalog fails in about a second, not thirty.
FAST_DOWNLOAD = "\n[download]\nretries = 1\nbackoff_factor = 0.01\nconnect_timeout = 2\n"
STARTUP_BOUND = 10.0  # seconds a refused start may take (the S3 client's own retries of an endpoint that is down)


@dataclass
class Shared:
    """One deployment: luigid, the servers, the job's and the helper's project folders."""

    luigid: Luigid
    site: Site
    mail: MailServer
    ping: PingServer
    runlog_url: str
    s3: Any
    bucket: str
    job: Path
    helper: Path

    def rows(self, sql: str) -> list[tuple]:
        with engine_for(self.runlog_url, Path("unused")).read_only() as db:
            return [tuple(row) for row in db.execute(sql).fetchall()] if db is not None else []

    def report(self, run_id: str) -> dict:
        body = self.s3.client().get_object(Bucket=self.bucket, Key=f"hospitals/reports/{run_id}.json")["Body"]
        return json.loads(body.read())


def host(root: Path, name: str, site: Site, luigid: Luigid, runlog_url: str, bucket: str, overlay: str) -> Path:
    """A machine's project folder: the shipped luigi.cfg (the loopback catalog, its own scratch folder) and
    deploy/central.cfg with luigid's port, the test's run log and bucket, and `overlay` appended."""
    folder = root / name
    folder.mkdir(parents=True)
    lines = project_cfg_lines(site, scratch_dir=str(root / f"{name}-scratch"))
    (folder / "luigi.cfg").write_text("\n".join(lines) + "\n", encoding="utf-8")
    central = with_runlog_url((DEPLOY / "central.cfg").read_text(encoding="utf-8"), runlog_url)
    assert "scheduler_port = 8082\n" in central and BUCKET_LINES in central
    central = central.replace("scheduler_port = 8082", f"scheduler_port = {luigid.port}")
    central = central.replace(BUCKET_LINES, f"[HospitalsDaily]\ndata_dir = s3://{bucket}/hospitals\n")
    (folder / "central.cfg").write_text(central + FAST_DOWNLOAD + overlay, encoding="utf-8")
    return folder


@contextmanager
def shared(tmp_path: Path, postgres, s3, monkeypatch, *, latency: float = 0.2):
    for key, value in s3.env().items():  # the job's and the assistant's keys, as ~/.aws would give them
        monkeypatch.setenv(key, value)
    runlog_url, bucket = postgres.url(), s3.new_bucket()
    with (
        Luigid(tmp_path / "luigid", (DEPLOY / "luigid.cfg").read_text(encoding="utf-8")) as luigid,
        LoopbackServer(latency=latency) as server,
        MailServer() as mail,
        PingServer() as ping,
    ):
        site = Site(server)
        told = notify_cfg(mail, ping.url, timeout=5)
        job = host(tmp_path, "host-a", site, luigid, runlog_url, bucket, told)
        helper = host(tmp_path, "host-b", site, luigid, runlog_url, bucket, told)
        yield Shared(luigid, site, mail, ping, runlog_url, s3, bucket, job, helper)


def output(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")


# -- 1 and 5: a run that fails ends within seconds, once told, and luigid shows what failed as FAILED -----------


@pytest.mark.parametrize("case", ["catalog unreachable", "a version fails"])
def test_a_failed_shared_run_ends_within_seconds_mails_once_and_luigid_counts_the_failure_as_failed(
    tmp_path, postgres, s3, monkeypatch, case
):
    with shared(tmp_path, postgres, s3, monkeypatch) as run:
        if case == "catalog unreachable":
            dead = f"http://127.0.0.1:{free_port()}/provider-data/api/1/metastore/schemas/dataset/items"
            for folder in (run.job, run.helper):
                config = (folder / "luigi.cfg").read_text(encoding="utf-8")
                (folder / "luigi.cfg").write_text(config.replace(run.site.metastore_url, dead), encoding="utf-8")
        else:
            serve(run.site, 4, missing=1)
        assistant, assistant_log = start_assistant(run.helper)
        started = time.monotonic()
        job, job_log = start_shared_run(run.job, "fails", workers=2)
        try:
            code = finish(job, timeout=120)
            took = time.monotonic() - started
            ended = time.time()
            failed, disabled = run.luigid.families("FAILED"), run.luigid.families("DISABLED")
            pending = run.luigid.families("PENDING")
            assert assistant.poll() is None, output(assistant_log)
        finally:
            stop_client(assistant)
    out = output(job_log)
    assert code == 30, out
    [(status, finished_at, error, failures)] = run.rows("SELECT status, finished_at, error, failed FROM runs")
    assert status == "failed"
    assert ended - datetime.fromisoformat(finished_at).timestamp() < END_BOUND + 1, out  # was: the 10-minute limit
    assert "Traceback" not in out and out.count("HospitalsDaily run fails failed: ") == 1, out
    [received] = run.mail.mails  # the run's, and no traceback mail
    assert received["Subject"].startswith("HospitalsDaily run fails failed: ")
    assert run.ping.paths() == ["/start", "/fail"]
    assert disabled == {}, disabled
    if case == "catalog unreachable":
        assert error.startswith(f"metastore {dead}: "), error
        assert f"  ERROR metastore {dead}: " in out and "  ERROR metastore " in text(received)
        assert failed == {"FetchCatalog": 1} and pending == {"HospitalsDaily": 1}, (failed, pending)
        assert took < 30, took
    else:
        assert error is None and failures == 1
        [line] = [line for line in out.splitlines() if line.startswith("  FAILED ")]
        assert line.startswith("  FAILED ds00-test: download of ") and line.endswith("HTTP 404 Not Found"), line
        assert failed == {"DownloadCsv": 1}, failed
        assert run.report("fails")["status"] == "failed"


# -- 2 and 4: the start-up checks, the same line and exit code from the luigi command and shared_run ------------


def job_command(command: str) -> list[str]:
    if command == "luigi":
        return [console_script("luigi"), "--module", "pipeline", "HospitalsDaily", "--workers", "2"]
    if command == "shared_run":
        return [sys.executable, "-m", "pipeline.shared_run", "--workers", "2"]
    return [sys.executable, "-m", "pipeline.assistant", "--workers", "2"]


def refused(folder: Path, command: str, config: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """The command as cron or systemd starts it, with LUIGI_CONFIG_PATH=`config` and `env` added (a value of
    "" removes a variable); returns its result and the seconds it took."""
    environment = {**loopback_env(config), **env}
    environment = {key: value for key, value in environment.items() if value != ""}
    started = time.monotonic()
    result = subprocess.run(
        job_command(command),
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    return result, time.monotonic() - started


def nothing_was_done(run: Shared) -> None:
    assert run.site.server.paths() == [], "not even the catalog"
    assert run.rows("SELECT run_id FROM runs") == [] if _has_runs(run) else True
    assert run.mail.mails == [] and run.ping.pings == []
    assert run.luigid.tasks() == {}


def _has_runs(run: Shared) -> bool:
    with engine_for(run.runlog_url, Path("unused")).read_only() as db:
        return db is not None


@pytest.mark.parametrize("command", ["luigi", "shared_run"])
@pytest.mark.parametrize("case", ["bucket missing", "keys refused", "no keys", "endpoint down", "boto3 missing"])
def test_a_bucket_that_cannot_be_used_stops_either_command_with_the_same_line_and_exit_4(
    tmp_path, postgres, s3, monkeypatch, case, command
):
    from tests.s3_support import SECRET_KEY

    with shared(tmp_path, postgres, s3, monkeypatch) as run:
        serve(run.site, 2)
        run.site.server.clear()
        central = run.job / "central.cfg"
        bucket, env = run.bucket, {"HOME": str(tmp_path)}  # no ~/.aws to fall back on
        if case == "bucket missing":
            bucket = "cms-dta"  # the typo
            central.write_text(central.read_text(encoding="utf-8").replace(run.bucket, bucket), encoding="utf-8")
            expected = f"pipeline: s3://{bucket}: the bucket does not exist (NoSuchBucket)"
        elif case == "keys refused":
            env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret-key-31f7"
            expected = f"pipeline: s3://{bucket}: access denied (403): check the credentials and the bucket's policy"
        elif case == "no keys":
            env.update(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
            expected = f"pipeline: s3://{bucket}: no credentials found ("
        elif case == "endpoint down":
            env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
            expected = f"pipeline: s3://{bucket}: endpoint unreachable (Could not connect to the endpoint URL: "
        else:
            hidden = tmp_path / "no-boto3" / "boto3"
            hidden.mkdir(parents=True)
            (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'boto3'\")\n", encoding="utf-8")
            env["PYTHONPATH"] = str(hidden.parent)
            expected = f"pipeline: data_dir s3://{bucket}/hospitals is in object storage but boto3 is not installed: "
        result, took = refused(run.job, command, central, **env)
        assert result.returncode == 4, result.stdout + result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith(expected), line
        assert result.stdout == "" and took < STARTUP_BOUND, took
        assert SECRET_KEY not in line and "not-the-secret" not in line
        nothing_was_done(run)


@pytest.mark.parametrize("command", ["luigi", "shared_run", "assistant"])
def test_a_config_path_that_names_no_file_is_refused_in_one_line_before_anything_is_done(
    tmp_path, postgres, s3, monkeypatch, command
):
    with shared(tmp_path, postgres, s3, monkeypatch) as run:
        serve(run.site, 2)
        run.site.server.clear()
        typo = run.job / "centrl.cfg"
        result, took = refused(run.job, command, typo)
        nothing_was_done(run)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    if command == "luigi":  # Luigi warns as it is imported, before the pipeline can say anything
        assert lines[:-1] == [
            f"{Path(luigi_configuration_core())}:63: UserWarning: Config file does not exist: {typo}",
            '  warnings.warn("Config file does not exist: {path}".format(path=path))',
        ], lines
    assert lines[-1] == (
        f"pipeline: LUIGI_CONFIG_PATH={typo} names no file (looked from {run.job}); nothing was done: "
        "correct the path, or unset LUIGI_CONFIG_PATH to run on luigi.cfg alone"
    )
    assert command == "luigi" or len(lines) == 1
    assert result.stdout == "" and took < STARTUP_BOUND, took


def luigi_configuration_core() -> str:
    import luigi.configuration.core

    return luigi.configuration.core.__file__


# -- 3: whatever closes the run, the job tells, with the job's settings ----------------------------------------


def wait_for_assistant(luigid: Luigid, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Until luigid has seen the assistant ask for work."""
    deadline = time.monotonic() + timeout
    while not any(worker.get("assistant") for worker in luigid.rpc("worker_list")):
        assert time.monotonic() < deadline and proc.poll() is None, output(log)
        time.sleep(0.1)


def test_a_run_closed_by_an_assistant_started_before_the_overlay_gained_mail_and_ping_is_told_once(
    tmp_path, postgres, s3, monkeypatch
):
    """The assistant read its overlay before [email], [smtp] and [notify] were added to it; with 8 versions and
    4 of its workers against the job's 1 it settles most of them, so it usually closes the run. The mail and the
    final ping come from the job, with the job's settings, whoever closed it. A second before every response: the
    job's one worker needs 8 s for the files alone, and the assistant asks luigid for work at most 3 s apart
    (deploy/central.cfg's wait_interval and wait_jitter), so it always gets some."""
    with shared(tmp_path, postgres, s3, monkeypatch, latency=1.0) as run:
        serve(run.site, 8, missing=2)
        central = run.helper / "central.cfg"
        edited = central.read_text(encoding="utf-8")
        before = edited.split("\n[email]\n")[0]
        central.write_text(before, encoding="utf-8")
        assistant, assistant_log = start_assistant(run.helper, workers=4)
        try:
            wait_for_assistant(run.luigid, assistant, assistant_log)
            central.write_text(edited, encoding="utf-8")  # the operator's edit, with the assistant running
            job, job_log = start_shared_run(run.job, "edited", workers=1)
            code = finish(job, timeout=120)
            failed = run.luigid.families("FAILED")
        finally:
            stop_client(assistant)
    out = output(job_log)
    assert code == 30, out + output(assistant_log)
    helped = [line for line in output(assistant_log).splitlines() if "/8] ds0" in line or "HTTP 404" in line]
    assert helped, "the assistant settled no version of the run:\n" + output(assistant_log) + out
    assert len(run.mail.mails) == 1, "\n\n".join(text(mail) for mail in run.mail.mails) + output(assistant_log) + out
    [received] = run.mail.mails
    assert received["Subject"].startswith("HospitalsDaily run edited failed: 8 discovered, 6 downloaded")
    assert text(received).count("  FAILED ds0") == 2
    assert run.ping.paths() == ["/start", "/fail"]
    [summary] = [line for line in out.splitlines() if line.startswith("HospitalsDaily run edited failed: ")]
    assert run.ping.pings[1].body.splitlines()[0] == summary
    assert "HospitalsDaily run edited" not in output(assistant_log)
    assert failed == {"DownloadCsv": 2}, failed
    [(status, failures, notes)] = run.rows("SELECT status, failed, notes FROM runs")
    assert (status, failures, json.loads(notes or "[]")) == ("failed", 2, [])


# -- 6: an assistant that loses luigid says so in one line and comes back with it -----------------------------


def test_an_assistant_that_loses_luigid_says_so_in_one_line_and_takes_part_again_once_it_is_back(
    tmp_path, postgres, s3, monkeypatch
):
    with shared(tmp_path, postgres, s3, monkeypatch) as run:
        serve(run.site, 3)
        assistant, assistant_log = start_assistant(run.helper)
        try:
            wait_for_assistant(run.luigid, assistant, assistant_log)
            port = run.luigid.port
            run.luigid.stop()
            deadline = time.monotonic() + 60  # deploy/central.cfg: 3 attempts 10 s apart, then the line
            while "cannot reach the central scheduler" not in output(assistant_log):
                assert time.monotonic() < deadline and assistant.poll() is None, output(assistant_log)
                time.sleep(0.2)
            run.luigid.start(port)  # as systemd restarts it
            wait_for_assistant(run.luigid, assistant, assistant_log, timeout=60)
            job, job_log = start_shared_run(run.job, "back", workers=1)
            assert finish(job, timeout=120) == 0, output(job_log)
            assert assistant.poll() is None, output(assistant_log)
        finally:
            stop_client(assistant)
    said = [line for line in output(assistant_log).splitlines() if "central scheduler" in line]
    assert said and "Traceback" not in output(assistant_log), output(assistant_log)
    assert said[0] == (
        "ERROR: assistant: cannot reach the central scheduler: Errors (3 attempts) when connecting to remote "
        f"scheduler 'http://127.0.0.1:{port}' (ConnectionRefusedError: [Errno 111] Connection refused); "
        "is luigid running? Trying again in 10 s"
    )
