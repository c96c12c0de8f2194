"""The run log on PostgreSQL: for several machines (or many processes) sharing one run.

The SQL is the SQLite engine's: `?` placeholders become psycopg2's, INTEGER columns become BIGINT (a file's
size passes 2**31), and `versions` gets a `rowid` column in insertion order, which SQLite has built in.

What SQLite's `BEGIN IMMEDIATE` gives, one writer at a time, every write transaction gets here from a
transaction-scoped advisory lock taken first: read-then-write sequences are serialized (the close claim has
exactly one winner, overlapping runs lose no update), and the lock goes with the transaction, whatever ends
it. Reads take no lock (READ COMMITTED). The schema is created and migrated under the same lock.

A pool of connections per process (keyed by process id: a forked process opens its own): each operation takes
an idle one, or opens one, and gives it back, so the tasks running in threads (pipeline/task_threads.py) never
share a transaction and the pool holds as many connections as operations ever ran at once. A connection that
broke (PostgreSQL restarted) is dropped; the operation that found it broken is tried once more on a new
connection only when nothing of it had run yet.

The driver is psycopg2 (its binary wheel): it imports in about 0.02 s where psycopg 3 takes 0.1 s, and every
run imports it on its critical path (docs/benchmark.md, "The run log on PostgreSQL"). Bulk writes (a plan of
thousands of rows) go out in pages of statements, `execute_batch`, not one round trip each.
"""

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from pipeline.runlog_engines import url as urls
from pipeline.runlog_engines.steps import check_version, statements

CONNECT_TIMEOUT = 10  # seconds; a connect_timeout in the URL wins
LOCK_KEY = 0x636D_7352_756E  # any constant: every writer of the run log takes this one advisory lock
_IDLE: dict[tuple[int, str], list["_Connection"]] = {}  # (process id, URL) -> connections no operation holds
_POOL = threading.Lock()
_SCHEMA_CHECKED: set[str] = set()  # URLs whose schema is up to date: forked workers inherit it
_PLACEHOLDER = re.compile(r"\?")
_INTEGER = re.compile(r"\bINTEGER\b")


class RunLogUnavailable(Exception):
    """The run log's server cannot be used: one line naming host:port/db and the cause, never the password."""


def _driver():
    try:
        import psycopg2
        import psycopg2.extras
    except ImportError as exc:
        raise RunLogUnavailable(
            "the run log is on PostgreSQL but its driver is not installed: pip install -e .[postgres] "
            f"(psycopg2-binary) ({exc})"
        ) from None
    return psycopg2


class Row(tuple):
    """A row readable by position and by column name, as sqlite3.Row is."""

    names: tuple[str, ...] = ()

    def __getitem__(self, key):  # type: ignore[override]
        return super().__getitem__(self.names.index(key) if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self.names)


_ROW_TYPES: dict[tuple[str, ...], type[Row]] = {}


class _Result:
    """A cursor's rows as sqlite3 gives them: fetchone, fetchall, iteration; each a Row."""

    def __init__(self, cursor):
        self.cursor = cursor
        names = tuple(c.name for c in cursor.description or ())
        if (kind := _ROW_TYPES.get(names)) is None:
            kind = _ROW_TYPES[names] = type("Row", (Row,), {"names": names})
        self._kind = kind

    def fetchone(self):
        row = self.cursor.fetchone() if self.cursor.description else None
        return None if row is None else self._kind(row)

    def fetchall(self) -> list:
        return [self._kind(row) for row in self.cursor.fetchall()] if self.cursor.description else []

    def __iter__(self):
        return iter(self.fetchall())


class _Connection:
    """psycopg2's connection, spoken to with the SQLite engine's SQL."""

    def __init__(self, conn):
        self.conn = conn
        self._sql: dict[str, str] = {}
        self._prepared: dict[str, str] = {}

    @property
    def closed(self) -> bool:
        return bool(self.conn.closed)

    def _translated(self, sql: str) -> str:
        if (translated := self._sql.get(sql)) is None:
            translated = self._sql[sql] = _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))
        return translated

    def execute(self, sql: str, params=()) -> _Result:
        cursor = self.conn.cursor()
        cursor.execute(self._translated(sql), tuple(params))
        return _Result(cursor)

    def executemany(self, sql: str, rows) -> None:
        """One statement for many rows (a plan: thousands): prepared once per connection, so the server plans it
        once, then executed in pages of 500 per round trip."""
        if not rows:
            return
        if (prepared := self._prepared.get(sql)) is None:
            numbers = iter(range(1, sql.count("?") + 1))
            name = f"runlog_{len(self._prepared)}"
            self.conn.cursor().execute(f"PREPARE {name} AS " + _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", sql))
            prepared = self._prepared[sql] = f"EXECUTE {name} ({', '.join(['%s'] * sql.count('?'))})"
        _driver().extras.execute_batch(self.conn.cursor(), prepared, rows, page_size=500)


class PostgresEngine:
    def __init__(self, url: str):
        self.url = urls.public(url)

    # -- connections ------------------------------------------------------------------------------------

    def _fail(self, exc: BaseException, doing: str) -> RunLogUnavailable:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        return RunLogUnavailable(f"run log {urls.where(self.url)}: {doing}: {urls.redact(cause, self.url)}")

    def _open(self):
        psycopg2 = _driver()
        options: dict[str, Any] = {}
        if "connect_timeout" not in psycopg2.extensions.parse_dsn(self.url):
            options["connect_timeout"] = CONNECT_TIMEOUT
        if (secret := urls.password(self.url)) is not None:
            options["password"] = secret
        try:
            raw = psycopg2.connect(self.url, **options)
        except psycopg2.Error as exc:
            raise self._fail(exc, "cannot connect") from None
        raw.autocommit = True  # BEGIN and COMMIT are sent as the SQLite engine sends them
        return raw

    def _take(self) -> tuple[_Connection, bool]:
        """An idle connection of this process's pool, else a new one; and whether it was reused."""
        with _POOL:
            idle = _IDLE.setdefault((os.getpid(), self.url), [])
            while idle:
                if not (conn := idle.pop()).closed:
                    return conn, True
        return _Connection(self._open()), False

    def _give_back(self, conn: _Connection) -> None:
        if not conn.closed:
            with _POOL:
                _IDLE.setdefault((os.getpid(), self.url), []).append(conn)

    def _begin(self, statements: list[tuple[str, tuple]]) -> tuple[_Connection, Any]:
        """A connection on which `statements` ran, and the last one's result; a pooled connection found broken
        is replaced once by a new one (nothing had run on it)."""
        psycopg2 = _driver()
        for attempt in (1, 2):
            db, reused = self._take()
            try:
                result = None
                for sql, params in statements:
                    result = db.execute(sql, params)
                return db, result
            except psycopg2.OperationalError as exc:
                _close(db)
                if not (reused and attempt == 1):  # a fresh connection that fails is a real failure
                    raise self._fail(exc, "lost the connection") from None
                close_idle(self.url)  # the server restarted: the pool's other connections are as broken
        raise AssertionError("unreachable")

    @contextmanager
    def _session(self, begin: tuple[str, ...]) -> Iterator[_Connection]:
        psycopg2 = _driver()
        db, _ = self._begin([(statement, ()) for statement in begin])
        try:
            yield db
            if begin:
                db.execute("COMMIT")
        except psycopg2.OperationalError as exc:
            _close(db)
            raise self._fail(exc, "lost the connection; this outcome was not recorded") from None
        except BaseException:
            if begin and not db.closed:
                try:
                    db.execute("ROLLBACK")
                except psycopg2.OperationalError:
                    _close(db)
            raise
        finally:
            self._give_back(db)

    def ensure_schema(self, migrations: list[str]) -> None:
        if self.url in _SCHEMA_CHECKED:
            return
        with self._session(("BEGIN", f"SELECT pg_advisory_xact_lock({LOCK_KEY})")) as db:
            _migrate(db, migrations)
        _SCHEMA_CHECKED.add(self.url)

    @contextmanager
    def connection(self) -> Iterator[_Connection]:
        with self._session(("BEGIN READ ONLY",)) as db:  # a broken connection shows here, before any work
            yield db

    @contextmanager
    def transaction(self) -> Iterator[_Connection]:
        with self._session(("BEGIN", f"SELECT pg_advisory_xact_lock({LOCK_KEY})")) as db:
            yield db

    @contextmanager
    def session_lock(self, key: int, wait: bool = True) -> Iterator[bool]:
        """An advisory lock every machine that reaches this database shares (the data folder's locks when the
        data is in object storage), held by a connection of the pool until released: PostgreSQL drops it when
        the connection ends, however its process died. Yields False at once if another holder has it and wait
        is False."""
        sql = "SELECT pg_advisory_lock(?)" if wait else "SELECT pg_try_advisory_lock(?)"
        db, result = self._begin([(sql, (key,))])
        held = result.fetchone()[0] is not False
        try:
            yield held
        finally:
            try:
                if held:
                    db.execute("SELECT pg_advisory_unlock(?)", (key,))
            except BaseException:
                _close(db)  # the server releases what a closed connection held
                raise
            finally:
                self._give_back(db)

    @contextmanager
    def read_only(self) -> Iterator[_Connection | None]:
        """Without creating or writing anything; None when the run log has no tables yet."""
        with self._session(("BEGIN READ ONLY",)) as db:
            yield db if _version(db) else None


def close_idle(url: str | None = None) -> None:
    """Close the idle connections of this process's pool for `url`, or of all its pools: a worker's run is over
    (pipeline/task_threads.py); the next operation opens what it needs."""
    with _POOL:
        mine = [key for key in _IDLE if key[0] == os.getpid() and url in (None, key[1])]
        idle = [conn for key in mine for conn in _IDLE.pop(key)]
    for conn in idle:
        _close(conn)


def _close(db: _Connection) -> None:
    with suppress(Exception):  # already broken: nothing to close politely
        db.conn.close()


def _version(db: _Connection) -> int:
    if db.execute("SELECT to_regclass('runlog_schema')").fetchone()[0] is None:
        return 0
    row = db.execute("SELECT version FROM runlog_schema").fetchone()
    return row[0] if row else 0


def _migrate(db: _Connection, migrations: list[str]) -> None:
    """Every missing step in the caller's transaction, under the advisory lock: concurrent starters wait, then
    find nothing to do. The version lives in `runlog_schema` (SQLite keeps it in PRAGMA user_version)."""
    version = _version(db)
    check_version(version, len(migrations))
    if version == len(migrations):
        return
    db.execute("CREATE TABLE IF NOT EXISTS runlog_schema (version INTEGER NOT NULL)")
    for number, step in enumerate(migrations[version:], start=version + 1):
        for statement in statements(step):
            statement = _INTEGER.sub("BIGINT", statement)
            db.execute(re.sub(r"ADD COLUMN (?!IF NOT EXISTS)", "ADD COLUMN IF NOT EXISTS ", statement))
        if number == 1:
            db.execute("ALTER TABLE versions ADD COLUMN IF NOT EXISTS rowid BIGSERIAL")
    db.execute("DELETE FROM runlog_schema")
    db.execute("INSERT INTO runlog_schema(version) VALUES (?)", (len(migrations),))
