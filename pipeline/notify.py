"""Telling the operator: one mail per run, from its outcome, and a heartbeat for a dead man's switch.

`[notify] email` (never, failures, always) mails the run's summary once, from whichever process closes the
run, through Luigi's own mail settings (`[email]`, `[smtp]`), so every transport Luigi has works. `[notify]
ping_url` follows healthchecks.io: `<ping_url>/start` when the run starts, then `<ping_url>` or
`<ping_url>/fail` with the summary as the body. Neither may become a new way to fail: each waits at most
`[notify] timeout` seconds, and what went wrong is one NOTE; the run's outcome and exit code stay as they were.
The `[smtp]` password and the ping URL's last path segment (its secret) appear in no NOTE or log line.
"""

import html
import logging
import smtplib
import socket
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from urllib.parse import urlsplit

import luigi.configuration
import luigi.scheduler
import luigi.worker
import requests
from luigi import notifications

from pipeline.console import expected
from pipeline.report import summary_lines

logger = logging.getLogger("luigi-interface")
MODES = ("never", "failures", "always")
DEFAULT_MODE, DEFAULT_TIMEOUT = "failures", 10.0
PING_BODY_LIMIT = 100_000  # bytes: healthchecks.io keeps no more of a ping's body
# Luigi's [smtp] settings default to None and warn about it on every read: not the operator's doing.
warnings.filterwarnings("ignore", r'Parameter "(local_hostname|password|username)" with value "None"', UserWarning)


def run_started() -> None:
    """`<ping_url>/start`, once per run where it starts. A failure is a warning only: what the monitor must
    hear is the run's end, and a failed end is the run's NOTE."""
    url, timeout, _ = _settings()
    if url and (problem := _ping(url, "/start", "", timeout)):
        logger.warning("%s", problem)


def run_closed(report: dict, report_path) -> list[str]:
    """The run's mail and final ping, from its report; returns a NOTE for each that failed (and for a setting
    that could not be used). The ping's body is the summary with the mail's NOTE, if any."""
    url, timeout, notes = _settings()
    failed, mode = report["status"] != "succeeded", _mode(notes)
    wanted = mode == "always" or (failed and mode == "failures")
    if wanted and (note := _mail(report, report_path, timeout)):
        notes.append(note)
    if url:
        body = "\n".join(summary_lines({**report, "notes": [*report["notes"], *notes]}, report_path))
        if note := _ping(url, "/fail" if failed else "", body, timeout):
            notes.append(note)
    return notes


def mail_bug(task, exception: BaseException) -> None:
    """Luigi's own failure mail, traceback included, for an unexpected exception in one of our tasks: the
    shipped luigi.cfg turns Luigi's per-task mails off (`[worker] send_failure_email = false`), since the run's
    mail names every expected failure; a bug must still reach the operator. Runs in the task's process."""
    if expected(exception) or luigi.worker.worker().send_failure_email:
        return
    trace = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
    subject = f"Luigi: {task} FAILED. Host: {socket.gethostname()}"
    headline = "A task failed when running. Most likely run() raised an exception."
    body = notifications.format_task_error(headline, task, subprocess.list2cmdline(sys.argv), trace)
    _, timeout, _ = _settings()
    problem = _bounded(lambda: _send(lambda: notifications.send_error_email(subject, body, task.owner_email)), timeout)
    if problem:
        logger.warning("%s: the mail about this failure was not sent: %s", task, _scrub(problem))


def redact(url: str) -> str:
    """The ping URL without its secret (the last path segment), its query or any user:password."""
    parts = urlsplit(url)
    head = parts.path.rstrip("/").rpartition("/")[0]
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{head}/…"


# -- settings ------------------------------------------------------------------------------------------------


def _settings() -> tuple[str, float, list[str]]:
    """(ping URL without a trailing slash, timeout, NOTEs about values that could not be used)."""
    config, notes = luigi.configuration.get_config(), []
    url = config.get("notify", "ping_url", "").strip().rstrip("/")
    text = config.get("notify", "timeout", str(DEFAULT_TIMEOUT))
    try:
        timeout = float(text)
        if timeout <= 0:
            raise ValueError
    except ValueError:
        timeout = DEFAULT_TIMEOUT
        notes.append(f"[notify] timeout = {text} is not a number of seconds above 0; {DEFAULT_TIMEOUT:g} used")
    if url and urlsplit(url).scheme not in ("http", "https"):
        notes.append(f"[notify] ping_url is not an http(s) URL ({redact(url)}); no ping sent")
        url = ""
    return url, timeout, notes


def _mode(notes: list[str]) -> str:
    mode = luigi.configuration.get_config().get("notify", "email", DEFAULT_MODE).strip().lower()
    if mode in MODES:
        return mode
    notes.append(f"[notify] email = {mode} is not one of {', '.join(MODES)}; {DEFAULT_MODE} used")
    return DEFAULT_MODE


# -- the mail ------------------------------------------------------------------------------------------------


def _mail(report: dict, report_path, timeout: float) -> str | None:
    receiver = notifications.email().receiver
    if not receiver:
        return None
    summary = summary_lines(report, report_path)
    subject = summary[0].split(". Report: ", 1)[0]
    body = "\n".join(summary) + "\n"
    if notifications.email().format == "html":
        body = f"<pre>{html.escape(body)}</pre>"
    sender = notifications.email().sender
    problem = _bounded(lambda: _send(lambda: notifications.send_email(subject, body, sender, [receiver])), timeout)
    if problem is None:
        return None
    method = notifications.email().method
    smtp = notifications.smtp()
    where = f"smtp {smtp.host}:{smtp.port or (465 if smtp.ssl else 25)}" if method == "smtp" else method
    return f"mail to {receiver} not sent ({where}): {_scrub(problem)}"


class _MailErrors(logging.Filter):
    """Luigi's SMTP sender logs a connection error instead of raising it: caught here (in the sending thread
    only) to become the NOTE, instead of a second line on the console."""

    def __init__(self):
        super().__init__()
        self.thread, self.problem = threading.get_ident(), None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread or record.module != "notifications" or record.levelno < logging.ERROR:
            return True
        exc = record.args[0] if isinstance(record.args, tuple) and record.args else None
        self.problem = _reason(exc) if isinstance(exc, BaseException) else record.getMessage()
        return False


def _send(send: Callable[[], None]) -> str | None:
    caught = _MailErrors()
    logger.addFilter(caught)
    try:
        send()
    finally:
        logger.removeFilter(caught)
    return caught.problem


# -- the ping ------------------------------------------------------------------------------------------------


def _ping(url: str, suffix: str, body: str, timeout: float) -> str | None:
    def post() -> str | None:
        data = body.encode("utf-8")[:PING_BODY_LIMIT]
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        # The socket's own timeout a little later than the thread's: a silent server gets one wording.
        answer = requests.post(url + suffix, data=data, headers=headers, timeout=timeout + 1)
        return None if answer.ok else f"HTTP {answer.status_code} {answer.reason}"

    problem = _bounded(post, timeout)
    return f"ping {redact(url)}{suffix} failed: {_scrub(problem)}" if problem else None


# -- shared --------------------------------------------------------------------------------------------------


def _bounded(action: Callable[[], str | None], timeout: float) -> str | None:
    """action() in a thread for at most `timeout` seconds (a socket timeout alone does not bound a server that
    answers slowly): None when it went well, else what went wrong. A thread still waiting is left behind; it
    is a daemon, so it does not keep the process alive."""
    outcome: list[str | None] = []

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as exc:  # any transport's error: the run goes on
            outcome.append(_reason(exc))

    thread = threading.Thread(target=run, name="notify", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return f"the server answered {exc.smtp_code} {message}"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect"  # requests' own text repeats the URL, secret included
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _scrub(text: str) -> str:
    """Text without the secrets of the settings, whatever a library put into it."""
    config = luigi.configuration.get_config()
    url = config.get("notify", "ping_url", "").strip().rstrip("/")
    secrets = [urlsplit(url).path.rpartition("/")[2], notifications.smtp().password or ""]
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "…")
    return text


# -- Luigi's scheduler's mail --------------------------------------------------------------------------------


class _SchedulerMails:
    """`luigi.notifications` as Luigi's scheduler sees it, but for its one mail, "DISABLED <task> due to excessive
    failures": a version is disabled at its second failure in a run (pipeline/tasks.py), so that mail is the
    failure mail again and follows the same switch, `[worker] send_failure_email`. (Luigi's `[scheduler]
    batch_emails` would hold it back too, but its batcher cannot be pickled: the spawn start method, Windows'
    only one, pickles the in-process scheduler with each task process.)"""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def send_error_email(self, subject, message, additional_recipients=None) -> None:
        if luigi.worker.worker().send_failure_email:
            self._module.send_error_email(subject, message, additional_recipients)


def install() -> None:
    if not isinstance(luigi.scheduler.notifications, _SchedulerMails):
        luigi.scheduler.notifications = _SchedulerMails(luigi.scheduler.notifications)  # type: ignore[assignment]
