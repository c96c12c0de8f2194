"""Where the run log lives: a SQLite file (the default) or a PostgreSQL database, chosen by its URL.

Both engines take the same SQL (SQLite's dialect, `?` placeholders) and give rows readable by position and
by name, so pipeline/runlog.py does not know which one is below.
"""

from pathlib import Path

from pipeline.runlog_engines import url as urls
from pipeline.runlog_engines.postgres import PostgresEngine, RunLogUnavailable
from pipeline.runlog_engines.sqlite import SqliteEngine
from pipeline.runlog_engines.steps import SchemaTooNew
from pipeline.runlog_engines.url import RunLogUrlError

Engine = SqliteEngine | PostgresEngine

__all__ = ["Engine", "RunLogUnavailable", "RunLogUrlError", "SchemaTooNew", "engine_for"]


def engine_for(url: str, default_path: Path) -> Engine:
    """`url` empty: SQLite at `default_path`, the data folder's runlog.sqlite."""
    if urls.engine(url) == "postgresql":
        return PostgresEngine(url)
    return SqliteEngine(urls.sqlite_path(url, default_path))
