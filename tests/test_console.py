"""What reaches the console: one line for expected problems, the traceback for bugs."""

import logging
import sqlite3
import sys

import pytest

from pipeline.console import OneLineForExpectedErrors, expected
from pipeline.errors import DatasetError


def record_for(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        return logging.LogRecord(
            "luigi-interface", logging.ERROR, __file__, 1, "failed %s", ("Task()",), sys.exc_info()
        )


@pytest.mark.parametrize(
    ("exc", "one_line"),
    [
        (DatasetError("48nr-hqxx", "HTTP 404"), True),
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("no such column: revision"), False),  # a bug: keep the traceback
        (ZeroDivisionError("a bug"), False),
    ],
)
def test_expected_problems_become_one_line_and_bugs_keep_their_traceback(exc, one_line):
    assert expected(exc) is one_line
    record = record_for(exc)
    OneLineForExpectedErrors().filter(record)
    if one_line:
        assert record.exc_info is None and record.getMessage() == f"failed Task(): {exc}"
    else:
        assert record.exc_info[1] is exc and record.getMessage() == "failed Task()"
