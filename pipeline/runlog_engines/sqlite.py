"""The run log in a SQLite file: the default, for one machine.

Several Luigi worker processes write at once, so every connection waits on locks (busy timeout) and the
database runs in WAL mode; each change is one short transaction, and `BEGIN IMMEDIATE` takes the write lock
up front so read-then-write sequences are serialized. A connection costs microseconds: one per operation.

Durability is stated, not left to the default: synchronous=FULL syncs the WAL at every commit, so a committed
outcome survives a power cut like the files it describes (which are synced before their row is written).
"""

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from pipeline.runlog_engines.steps import ADD_COLUMN, check_version, statements

BUSY_TIMEOUT_MS = 60_000


class SqliteEngine:
    def __init__(self, path: Path):
        self.path = Path(path)

    def ensure_schema(self, migrations: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connection() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] != len(migrations):
                _wal(db)
                _migrate(db, migrations)

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)) as db:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA synchronous=FULL")  # per connection: see the module's docstring
            yield db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connection() as db, _immediate(db):
            yield db

    @contextmanager
    def read_only(self) -> Iterator[sqlite3.Connection | None]:
        """Without creating or writing anything; None when there is no log yet."""
        if not self.path.exists():
            yield None
            return
        with closing(sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            yield db


def _wal(db: sqlite3.Connection) -> None:
    """WAL is persistent: set once, with the schema. Switching takes an exclusive lock for which SQLite does not
    wait, so processes opening a new run log together wait here for each other."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _migrate(db: sqlite3.Connection, migrations: list[str]) -> None:
    """Apply the missing steps in one transaction; a concurrent opener waits, then finds nothing to do."""
    with _immediate(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]
        check_version(version, len(migrations))
        for step in migrations[version:]:
            for statement in statements(step):
                if (add := ADD_COLUMN.search(statement)) and _has_column(db, *add.groups()):
                    continue
                db.execute(statement)
        db.execute(f"PRAGMA user_version={len(migrations)}")


def _has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in db.execute(f"PRAGMA table_info({table})"))
