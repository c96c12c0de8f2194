"""What the console shows: one line for each problem of data, network, disk or scheduler, a traceback only
for a bug. Luigi logs every failure with its traceback; this filter on its logger shortens the expected ones.
The same on Windows: in a spawned task process, and whatever character the console or log file cannot encode."""

import io
import logging
import sqlite3
import sys
import threading

import luigi.interface
from luigi.rpc import RPCError
from luigi.setup_logging import InterfaceLogging

from pipeline import processes
from pipeline.catalog import CatalogError
from pipeline.errors import DatasetError, RunClosed
from pipeline.http import DownloadError
from pipeline.runlog_engines import RunLogUnavailable

EXPECTED = (DatasetError, CatalogError, DownloadError, RunClosed, RunLogUnavailable)
# SQLite's words for a full or busy disk: the machine's state, not a bug (unlike "no such column").
_SQLITE_ENVIRONMENT = ("database or disk is full", "database is locked", "disk I/O error")
_NEVER_FAIL = ("backslashreplace", "namereplace", "xmlcharrefreplace", "replace", "ignore")


def expected(exc: BaseException | None) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return any(words in str(exc) for words in _SQLITE_ENVIRONMENT)
    return isinstance(exc, EXPECTED)


def _root_cause(exc: BaseException) -> BaseException:
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


class OneLineForExpectedErrors(logging.Filter):
    def __init__(self):
        super().__init__()
        self.scheduler_unreachable_said = False

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.getMessage().startswith(("Failed connecting to remote scheduler", "Failed pinging scheduler")):
            return False  # each retry; the line below says it once when the retries are spent
        if isinstance(exc, RPCError) and self.scheduler_unreachable_said:
            return False  # Luigi logs the same failure again on its way out
        if record.exc_info and exc is None:  # exc_info=True outside an except block prints "NoneType: None"
            record.exc_info = None
        elif expected(exc):
            record.msg, record.args = f"{record.getMessage()}: {exc}", ()
            record.exc_info = record.exc_text = None
        elif isinstance(exc, RPCError):
            self.scheduler_unreachable_said = True
            cause = _root_cause(exc)
            record.msg, record.args = (
                (
                    f"{record.getMessage()}: cannot reach the central scheduler: {exc} "
                    f"({type(cause).__name__}: {cause}); is luigid running?"
                ),
                (),
            )
            record.exc_info = record.exc_text = None
        return True


_SAYING = threading.Lock()


def say(line: str) -> None:
    """One whole line on stdout: print() writes the text and its newline apart, and tasks run in threads
    (pipeline/task_threads.py) would interleave them."""
    with _SAYING:
        sys.stdout.write(f"{line}\n")
        sys.stdout.flush()


def never_fail_on_a_character() -> None:
    """Windows writes a redirected stdout (Task Scheduler's log file, a pipe) in the ANSI code page, strictly: one
    "Ł" in a data path or a title ended a good run with a UnicodeEncodeError and exit 30. What the encoding
    lacks is printed escaped (\\u0141) instead; set PYTHONIOENCODING=utf-8 to have it as it is."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors not in _NEVER_FAIL:  # strict, surrogateescape
            stream.reconfigure(errors="backslashreplace")


def log_like_the_parent() -> None:
    """A spawned task process (Windows) starts with no logging set up: Luigi's failure lines came out through
    Python's last-resort handler, tracebacks and all. Set it up as the luigi command does, from luigi.cfg."""
    if processes.task_process() and not InterfaceLogging._configured:
        InterfaceLogging.setup(luigi.interface.core())


def install() -> None:
    never_fail_on_a_character()
    log_like_the_parent()
    logger = logging.getLogger("luigi-interface")
    if not any(isinstance(f, OneLineForExpectedErrors) for f in logger.filters):
        logger.addFilter(OneLineForExpectedErrors())
