"""Telling the operator: one mail per run and a heartbeat, through real servers on 127.0.0.1 (an SMTP server,
an HTTP ping endpoint); neither can change a run's outcome, and neither leaks a secret."""

import json
import subprocess
import time
from pathlib import Path

import luigi.configuration
import pytest

import pipeline.tasks
from pipeline import notify
from tests.fixtures import HEADER_IPF, csv_bytes, quoted_rows
from tests.harness import Site, by_identifier, run_command, run_daily, write_project_cfg
from tests.luigid_support import finish, free_port, loopback_env, stop_client
from tests.notify_support import (
    RECEIVER,
    MailServer,
    PingServer,
    made_local,
    notify_cfg,
    shipped_example,
    text,
)
from tests.test_shared_run import deployed, serve, start_assistant, start_shared_run, two_hosts

SECRET_PASSWORD = "s3cret-smtp-password"


def publish(site: Site, count: int, missing: int = 0) -> None:
    """`count` datasets, the first `missing` of them listed in the catalog but not served (HTTP 404)."""
    for n in range(count):
        body = csv_bytes(HEADER_IPF, quoted_rows(3, 4, f"{n}"))
        site.dataset(f"ds{n:02d}-test", "2025-04-08", {f"File{n}.csv": body}, serve=n >= missing)


def run_job(folder: Path, run_id: str, overlay: str | None) -> tuple[subprocess.CompletedProcess, float]:
    """The daily command, as cron runs it, from a project folder with the shipped luigi.cfg and `overlay` as
    the file LUIGI_CONFIG_PATH names; returns the result and the seconds it took."""
    config = None
    if overlay is not None:
        config = folder / "notify.cfg"
        config.write_text(overlay, encoding="utf-8")
    started = time.monotonic()
    result = run_command(folder, "--run-id", run_id, env=loopback_env(config))
    return result, time.monotonic() - started


def project(tmp_path: Path, site: Site, name: str = "project") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    write_project_cfg(site, folder)
    return folder


def summary(out: str) -> list[str]:
    """The summary lines a run printed: its first line and the indented ones after it."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HospitalsDaily run "))
    return lines[start:]


# -- with the real command -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_run_with_two_failures_sends_one_mail_naming_both_and_pings_start_then_fail(tmp_path, site):
    publish(site, 4, missing=2)
    folder = project(tmp_path, site)
    with MailServer() as mail, PingServer() as ping:
        result, _ = run_job(folder, "two-failed", notify_cfg(mail, ping.url))
    assert result.returncode == 30, result.stderr
    printed = summary(result.stdout)
    assert not [line for line in printed if "NOTE" in line]
    [received] = mail.mails  # not one per failed task, nor Luigi's "DISABLED ... due to excessive failures"
    assert received["To"] == RECEIVER and received["From"] == "cms-hospitals@example.org"
    assert received["Subject"] == (
        "HospitalsDaily run two-failed failed: 4 discovered, 2 downloaded, 0 up to date, 2 failed, 0 invalid, 0 retired"
    )
    body = text(received)
    assert body.splitlines() == printed
    report_path = folder / "data" / "reports" / "two-failed.json"
    assert f"Report: {report_path}" in body
    for identifier in ("ds00-test", "ds01-test"):
        [line] = [line for line in body.splitlines() if line.startswith(f"  FAILED {identifier}: ")]
        assert line.endswith("failed: HTTP 404 Not Found")
    assert "Traceback" not in body and "Traceback" not in result.stderr and "Warning" not in result.stderr
    assert ping.paths() == ["/start", "/fail"]
    assert ping.pings[1].body.splitlines() == printed


@pytest.mark.integration
@pytest.mark.parametrize("email_mode", ["failures", "always"])
def test_a_clean_run_mails_only_when_told_to_always_and_pings_start_then_success(tmp_path, site, email_mode):
    publish(site, 2)
    folder = project(tmp_path, site)
    with MailServer() as mail, PingServer() as ping:
        result, _ = run_job(folder, "clean", notify_cfg(mail, ping.url, email_mode))
    assert result.returncode == 0, result.stderr
    if email_mode == "always":
        [received] = mail.mails
        assert received["Subject"].startswith("HospitalsDaily run clean succeeded: 2 discovered, 2 downloaded")
        assert text(received).splitlines() == summary(result.stdout)
    else:
        assert mail.mails == []
    assert ping.paths() == ["/start", ""]
    assert ping.pings[1].body.splitlines() == summary(result.stdout)


@pytest.mark.integration
def test_a_mail_server_down_and_a_hanging_ping_endpoint_change_nothing_but_a_note_each(tmp_path, site):
    publish(site, 3, missing=1)
    quiet, quiet_took = run_job(project(tmp_path, site, "without"), "same-run", None)
    timeout = 3
    with PingServer(hang=True) as ping:
        folder = project(tmp_path, site, "project")
        result, took = run_job(folder, "same-run", notify_cfg(None, ping.url, timeout=timeout))
    assert result.returncode == quiet.returncode == 30, result.stderr
    printed = summary(result.stdout)
    notes = [line for line in printed if line.startswith("  NOTE ")]
    expected = [line.replace("/without/", "/project/") for line in summary(quiet.stdout)]
    assert [line for line in printed if line not in notes] == expected
    smtp_port = notify_cfg_port(folder)
    redacted = ping.url.rsplit("/", 1)[0] + "/…"
    assert notes == [
        f"  NOTE mail to {RECEIVER} not sent (smtp 127.0.0.1:{smtp_port}): Connection refused",
        f"  NOTE ping {redacted}/fail failed: no answer within {timeout} s",
    ]
    # The /start ping waited too: a warning on stderr, not a second NOTE.
    assert f"ping {redacted}/start failed: no answer within {timeout} s" in result.stderr
    assert took - quiet_took < 2 * timeout + 10, (took, quiet_took)
    report = (folder / "data" / "reports" / "same-run.json").read_text(encoding="utf-8")
    assert [f"  NOTE {note}" for note in json.loads(report)["notes"]] == notes
    for shown in (result.stdout, result.stderr, report):
        assert ping.secret not in shown
    assert ping.paths() == ["/start", "/fail"]
    assert ping.pings[1].body.splitlines() == [line for line in printed if line != notes[1]]  # the mail's NOTE too


def notify_cfg_port(folder: Path) -> str:
    [line] = [line for line in (folder / "notify.cfg").read_text(encoding="utf-8").splitlines() if "port" in line]
    return line.split("=")[1].strip()


@pytest.mark.integration
def test_a_shared_run_on_luigid_with_an_assistant_sends_one_mail(tmp_path):
    with deployed(tmp_path, latency=0.2) as (luigid, site), MailServer() as mail, PingServer() as ping:
        serve(site, 6, missing=2)
        data_dir, job_folder, helper_folder = two_hosts(tmp_path, site, luigid)
        for folder in (job_folder, helper_folder):  # deploy/central.cfg's lines, uncommented, on every machine
            with open(folder / "central.cfg", "a", encoding="utf-8") as central:
                central.write("\n" + made_local(shipped_example(), mail.port, ping.url))
        job, job_log = start_shared_run(job_folder, "shared", workers=2)
        assistant, _ = start_assistant(helper_folder)
        try:
            code = finish(job, timeout=120)
        finally:
            stop_client(assistant)
    out = job_log.read_text(encoding="utf-8", errors="replace")
    assert code == 30, out
    [received] = mail.mails
    assert received["To"] == "data-team@example.org"
    assert received["Subject"].startswith("HospitalsDaily run shared failed: 6 discovered, 4 downloaded")
    assert text(received).count("  FAILED ds0") == 2
    assert ping.paths() == ["/start", "/fail"]
    assert (data_dir / "reports" / "shared.json").exists()


# -- in-process runs (luigi.build): what only a test can make happen ------------------------------------------


@pytest.fixture
def notify_settings(luigi_setting):
    """Sets [email], [smtp] and [notify] for runs in this process; returns the function that does it."""

    def configure(mail: MailServer | None, ping_url: str = "", **smtp: str) -> None:
        port = str(mail.port) if mail else "1"
        for section, key, value in [
            ("email", "receiver", RECEIVER),
            ("smtp", "host", "127.0.0.1"),
            ("smtp", "port", port),
            ("notify", "ping_url", ping_url),
            ("notify", "timeout", "5"),
            *(("smtp", key, value) for key, value in smtp.items()),
        ]:
            luigi_setting(section, key, value)

    return configure


@pytest.mark.integration
def test_a_bug_still_mails_its_traceback_and_an_expected_failure_does_not(
    tmp_path, site, fast_http, notify_settings, monkeypatch
):
    publish(site, 3, missing=1)
    original = pipeline.tasks.make_normalized

    def broken(store, folder):
        if "ds02-test" in str(folder):
            raise RuntimeError("a planted bug")
        return original(store, folder)

    monkeypatch.setattr(pipeline.tasks, "make_normalized", broken)
    with MailServer() as mail:
        notify_settings(mail)
        ok, report = run_daily(site, tmp_path / "data", run_id="bug")
    assert not ok and report is not None
    subjects = sorted(received["Subject"] for received in mail.mails)
    assert len(subjects) == 2, subjects  # the run's mail and the bug's, not one for the 404
    [bug] = [received for received in mail.mails if received["Subject"].startswith("Luigi: NormalizeCsv")]
    assert "FAILED. Host: " in bug["Subject"]
    assert "Traceback (most recent call last)" in text(bug)
    assert "RuntimeError: a planted bug" in text(bug)
    [run_mail] = [received for received in mail.mails if received["Subject"].startswith("HospitalsDaily run bug")]
    assert "Traceback" not in text(run_mail)
    assert "  FAILED ds02-test: RuntimeError('a planted bug')" in text(run_mail).splitlines()


@pytest.mark.integration
def test_a_catalog_failure_pings_fail_and_mails(tmp_path, fast_http, notify_settings):
    with MailServer() as mail, PingServer() as ping:
        notify_settings(mail, ping.url)
        ok, report = run_daily(NoCatalog(), tmp_path / "data", run_id="no-catalog")
    assert not ok and report is not None and report["error"]
    [received] = mail.mails
    assert received["Subject"].startswith("HospitalsDaily run no-catalog failed: 0 discovered")
    assert "  ERROR metastore " in text(received)
    assert ping.paths() == ["/start", "/fail"]


class NoCatalog:
    """A site whose metastore URL has nothing listening: the catalog request fails after its retries."""

    def __init__(self):
        self.metastore_url = f"http://127.0.0.1:{free_port()}/provider-data/api/1/metastore/schemas/dataset/items"


@pytest.mark.integration
def test_a_refusing_mail_server_is_a_note_and_its_password_is_never_shown(
    tmp_path, site, fast_http, notify_settings, capfd
):
    publish(site, 2, missing=1)
    with MailServer(password="the-right-one") as mail:
        notify_settings(mail, username="cms", password=SECRET_PASSWORD)
        ok, report = run_daily(site, tmp_path / "data", run_id="refused")
    assert not ok and report is not None and mail.mails == []
    [note] = report["notes"]
    assert note.startswith(f"mail to {RECEIVER} not sent (smtp 127.0.0.1:{mail.port}): the server answered 535 ")
    said = capfd.readouterr()
    assert f"  NOTE {note}" in said.out.splitlines()
    assert by_identifier(report)["ds00-test"][0]["status"] == "failed"
    for shown in (said.out, said.err, json.dumps(report), *(p.read_text() for p in tmp_path.rglob("*.json"))):
        assert SECRET_PASSWORD not in shown


# -- pure ----------------------------------------------------------------------------------------------------


def test_the_ping_urls_secret_is_its_last_path_segment():
    assert notify.redact("https://hc-ping.com/0f8e4a52-5d2a-4c6e") == "https://hc-ping.com/…"
    assert notify.redact("https://user:pw@kuma.example.org:3001/api/push/AbC123?status=up") == (
        "https://kuma.example.org:3001/api/push/…"
    )
    assert notify.redact("http://127.0.0.1:8000/ping/abc/") == "http://127.0.0.1:8000/ping/…"


def test_unusable_notify_settings_are_notes_not_failures(luigi_setting):
    luigi_setting("notify", "timeout", "soon")
    luigi_setting("notify", "email", "sometimes")
    luigi_setting("notify", "ping_url", "ftp://example.org/secret-part")
    luigi_setting("email", "receiver", "")
    report = {"status": "failed", "notes": []}
    assert notify.run_closed(report, "r.json") == [
        "[notify] timeout = soon is not a number of seconds above 0; 10 used",
        "[notify] ping_url is not an http(s) URL (ftp://example.org/…); no ping sent",
        "[notify] email = sometimes is not one of never, failures, always; failures used",
    ]
    assert luigi.configuration.get_config().get("notify", "timeout") == "soon"


@pytest.mark.integration
def test_luigis_own_failure_mails_come_back_when_the_operator_turns_them_on(
    tmp_path, site, fast_http, notify_settings, luigi_setting
):
    publish(site, 2, missing=1)
    luigi_setting("worker", "send_failure_email", "true")
    with MailServer() as mail:
        notify_settings(mail)
        ok, _ = run_daily(site, tmp_path / "data", run_id="loud")
    assert not ok
    subjects = sorted(received["Subject"] for received in mail.mails)
    assert len(subjects) == 2, subjects  # a first failure is FAILED, not DISABLED: no scheduler mail
    assert subjects[0].startswith("HospitalsDaily run loud failed: ")
    assert subjects[1].startswith("Luigi: DownloadCsv") and "FAILED" in subjects[1]
