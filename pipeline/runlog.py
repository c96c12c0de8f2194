"""The run log: runs, the dataset versions ever seen, and what each run did with each version.

Several Luigi worker processes write at once; each change is one short transaction that holds the engine's
write lock from its start (pipeline/runlog_engines: SQLite by default, PostgreSQL for several machines), so
read-then-write sequences are serialized. The SQL is written once, in SQLite's dialect.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.catalog import CsvVersion, InvalidItem, VersionKey
from pipeline.runlog_engines import engine_for

Row = Any  # Row or its PostgreSQL twin: readable by position and by column name

# The first release's schema, frozen: a new database is built from it and brought up to date by MIGRATIONS,
# so a database left by any earlier release takes exactly the same path.
BASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,              -- running | closing | succeeded | failed | interrupted
    metastore_url TEXT,
    theme TEXT,
    discovered INTEGER, downloaded INTEGER, up_to_date INTEGER, failed INTEGER, invalid INTEGER,
    report_path TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    identifier TEXT NOT NULL,
    modified TEXT NOT NULL,
    download_url TEXT NOT NULL,
    title TEXT, theme TEXT, released TEXT, described_by TEXT,
    status TEXT NOT NULL,              -- pending | done | failed | pruned
    error TEXT,
    source_path TEXT, output_path TEXT, header_map_path TEXT,
    source_encoding TEXT, rows INTEGER, bytes INTEGER, sha256 TEXT,
    first_run_id TEXT, run_id TEXT,    -- first run that saw it, last run that worked on it
    updated_at TEXT,
    PRIMARY KEY (identifier, modified, download_url)
);
CREATE TABLE IF NOT EXISTS run_items (
    run_id TEXT NOT NULL,
    identifier TEXT NOT NULL,
    modified TEXT NOT NULL,
    download_url TEXT NOT NULL,
    title TEXT,
    outcome TEXT NOT NULL,             -- queued | downloaded | up_to_date | failed | invalid | retired
    error TEXT,
    PRIMARY KEY (run_id, identifier, modified, download_url)
);
"""

# Step N brings a database from user_version N-1 to N. Databases from before user_version existed are at 0
# whatever they hold, so every step is written to be a no-op where an earlier release already did it.
MIGRATIONS = [
    BASE_SCHEMA,
    """
    ALTER TABLE runs ADD COLUMN retired INTEGER;
    ALTER TABLE versions ADD COLUMN last_modified TEXT;      -- the file's Last-Modified when downloaded
    ALTER TABLE versions ADD COLUMN revision TEXT NOT NULL DEFAULT '';  -- set when verify found it replaced
    CREATE TABLE IF NOT EXISTS schema_changes (  -- a version whose normalized header differs from the previous
        identifier TEXT NOT NULL,
        modified TEXT NOT NULL,
        download_url TEXT NOT NULL,
        previous_modified TEXT,
        previous_url TEXT,
        change TEXT NOT NULL,              -- JSON: added, removed, renamed, moved
        run_id TEXT NOT NULL,
        PRIMARY KEY (identifier, modified, download_url)
    );
    CREATE TABLE IF NOT EXISTS superseded (  -- earlier revisions of a version whose file was replaced in place
        output_path TEXT PRIMARY KEY,
        identifier TEXT NOT NULL,
        modified TEXT NOT NULL,
        download_url TEXT NOT NULL,
        revision TEXT NOT NULL,            -- '' for the first download
        run_id TEXT NOT NULL,              -- the run that stored the newer revision
        status TEXT NOT NULL               -- kept | pruned
    );
    CREATE TABLE IF NOT EXISTS retired (   -- datasets of the theme that left the catalog; their files stay
        identifier TEXT PRIMARY KEY,
        title TEXT,
        theme TEXT,
        retired_at TEXT NOT NULL,
        run_id TEXT NOT NULL
    );
    """,
    """
    ALTER TABLE versions ADD COLUMN position INTEGER;  -- place among the dataset's CSV distributions, from 1
    """,
    """
    ALTER TABLE runs ADD COLUMN notes TEXT;    -- JSON list: the run's NOTE lines (repairs, retention, latest/)
    ALTER TABLE runs ADD COLUMN catalog TEXT;  -- JSON: the run's catalog snapshot, so a damaged copy is rebuilt
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunLog:
    """Stores and reads; what an outcome means is decided by the callers."""

    def __init__(self, path: Path, url: str = ""):
        """`path`: the data folder's runlog.sqlite, used when `url` is empty (pipeline/runlog_engines/url.py)."""
        self.engine = engine_for(url, Path(path))
        self.engine.ensure_schema(MIGRATIONS)

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        with self.engine.connection() as db:
            yield db

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """The engine's write lock is taken up front, so read-then-write sequences are serialized."""
        with self.engine.transaction() as db:
            yield db

    # -- runs ---------------------------------------------------------------------------------------------

    def start_run(self, run_id: str, metastore_url: str, theme: str) -> None:
        """Record a run; runs left open by a killed process are marked interrupted."""
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET status='interrupted', finished_at=COALESCE(finished_at, ?) "
                "WHERE status IN ('running', 'closing') AND run_id<>?",
                (now(), run_id),
            )
            db.execute(
                "INSERT INTO runs(run_id, started_at, status, metastore_url, theme) VALUES (?,?,?,?,?) "
                "ON CONFLICT(run_id) DO UPDATE SET status='running', finished_at=NULL, error=NULL",
                (run_id, now(), "running", metastore_url, theme),
            )

    def fail_run(self, run_id: str, error: str, finished_at: str, report_path: str | None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET status='failed', finished_at=?, error=?, report_path=? WHERE run_id=?",
                (finished_at, error, report_path, run_id),
            )

    def run(self, run_id: str) -> Row | None:
        with self._connect() as db:
            return db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()

    # -- the plan of a run --------------------------------------------------------------------------------

    def plan_run(
        self,
        run_id: str,
        queued: list[CsvVersion],
        up_to_date: list[tuple[CsvVersion, dict]],
        invalid: list[InvalidItem],
        snapshot: str | None = None,
    ) -> None:
        """Record what this run will do: `up_to_date` pairs each finished version with its stored stats;
        `snapshot` is the catalog file's text, kept to rebuild that file if it is ever damaged."""
        with self.transaction() as db:  # thousands of rows: each statement once, with all its rows
            db.execute("UPDATE runs SET catalog=? WHERE run_id=?", (snapshot, run_id))
            planned = [*((v, "queued") for v in queued), *((v, "up_to_date") for v, _ in up_to_date)]
            db.executemany(
                "INSERT INTO versions(identifier, modified, download_url, title, theme, released, described_by,"
                " position, status, first_run_id, run_id, updated_at) VALUES (?,?,?,?,?,?,?,?,'pending',?,?,?)"
                " ON CONFLICT(identifier, modified, download_url) DO UPDATE SET title=excluded.title,"
                " released=excluded.released, described_by=excluded.described_by, position=excluded.position",
                [
                    (*_key(v), v.title, v.theme, v.released, v.described_by, v.position, run_id, run_id, now())
                    for v, _ in planned
                ],
            )
            db.executemany(
                _PUT_ITEM,
                [
                    *((run_id, v.identifier, v.modified, v.url, v.title, outcome, None) for v, outcome in planned),
                    *((run_id, i.identifier, "", "", i.title, "invalid", i.error) for i in invalid),
                ],
            )
            # Heals a row whose outputs landed but whose log write did not; a row already done is left alone.
            db.executemany(
                _DONE + " AND status<>'done'", [_done_values(version, stats, None) for version, stats in up_to_date]
            )
            self._mark_retired(db, run_id, planned, invalid)

    @staticmethod
    def _put_item(
        db: Any,
        run_id: str,
        identifier: str,
        modified: str,
        url: str,
        title: str,
        outcome: str,
        error: str | None = None,
    ) -> None:
        db.execute(_PUT_ITEM, (run_id, identifier, modified, url, title, outcome, error))

    def _mark_retired(self, db: Any, run_id: str, planned, invalid: list[InvalidItem]) -> None:
        present = {v.identifier for v, _ in planned} | {i.identifier for i in invalid}
        themes = {v.theme for v, _ in planned}
        db.executemany("DELETE FROM retired WHERE identifier=?", [(identifier,) for identifier in present])
        for theme in themes:
            gone = db.execute(
                "SELECT identifier, max(title) FROM versions WHERE theme=? AND identifier NOT IN"
                " (SELECT identifier FROM retired) GROUP BY identifier",
                (theme,),
            ).fetchall()
            for identifier, title in gone:
                if identifier in present:
                    continue
                db.execute(
                    "INSERT INTO retired(identifier, title, theme, retired_at, run_id) VALUES (?,?,?,?,?)",
                    (identifier, title, theme, now(), run_id),
                )
                self._put_item(db, run_id, identifier, "", "", title, "retired")

    # -- outcomes of one version --------------------------------------------------------------------------

    def drift_context(self, run_id: str, version: CsvVersion) -> tuple[int | None, set[str], list[dict]]:
        """For schema drift: the version's position, the other CSV URLs of its dataset in this run, and the
        dataset's other finished versions, newest first. None of them for a version made again after a crash
        damaged it: its drift was reported when it was first stored."""
        with self._connect() as db:
            row = db.execute(
                "SELECT position, status, revision FROM versions WHERE identifier=? AND modified=? AND download_url=?",
                _key(version),
            ).fetchone()
            if row and row["status"] == "done" and row["revision"] == version.revision:
                return row["position"], set(), []
            siblings = {
                r[0]
                for r in db.execute(
                    "SELECT download_url FROM run_items WHERE run_id=? AND identifier=?"
                    " AND download_url<>? AND download_url<>''",
                    (run_id, version.identifier, version.url),
                )
            }
            done = db.execute(
                "SELECT modified, download_url, position, header_map_path FROM versions"
                " WHERE identifier=? AND status='done' AND NOT (modified=? AND download_url=?)"
                " ORDER BY rowid DESC",
                _key(version),
            ).fetchall()
        return (row[0] if row else None), siblings, [dict(r) for r in done]

    def record_done(
        self,
        run_id: str,
        version: CsvVersion,
        stats: dict,
        schema_change: str | None = None,
        previous: tuple[str, str] | None = None,
        outcome: str = "downloaded",
    ) -> tuple[int, int, int]:
        """Returns the run's progress after this version: (done, failed, total)."""
        with self.transaction() as db:
            self._store_done(db, version, stats, run_id)
            if schema_change and previous:
                db.execute(
                    "INSERT INTO schema_changes(identifier, modified, download_url, previous_modified,"
                    " previous_url, change, run_id) VALUES (?,?,?,?,?,?,?)"
                    " ON CONFLICT(identifier, modified, download_url) DO UPDATE SET"
                    " previous_modified=excluded.previous_modified, previous_url=excluded.previous_url,"
                    " change=excluded.change, run_id=excluded.run_id",
                    (*_key(version), *previous, schema_change, run_id),
                )
            db.execute(  # keeps a note the plan made (a repair)
                "UPDATE run_items SET outcome=? WHERE run_id=? AND identifier=? AND modified=? AND download_url=?",
                (outcome, run_id, *_key(version)),
            )
            return self._progress(db, run_id)

    @staticmethod
    def _store_done(db: Any, version: CsvVersion, stats: dict, run_id) -> None:
        key = _key(version)
        before = db.execute(
            "SELECT output_path, revision FROM versions WHERE identifier=? AND modified=?"
            " AND download_url=? AND status='done'",
            key,
        ).fetchone()
        if before and before[0] and before[0] != stats["output_path"]:  # a new revision: keep track of the old
            db.execute(
                "INSERT INTO superseded(output_path, identifier, modified, download_url, revision,"
                " run_id, status) VALUES (?,?,?,?,?,?,'kept') ON CONFLICT DO NOTHING",
                (before[0], *key, before[1], run_id or ""),
            )
        db.execute(_DONE, _done_values(version, stats, run_id))

    def record_download(self, version: CsvVersion, last_modified: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE versions SET last_modified=? WHERE identifier=? AND modified=? AND download_url=?",
                (last_modified, *_key(version)),
            )

    def known_versions(self) -> dict[VersionKey, tuple[str, str]]:
        """Version key -> (revision, Last-Modified) of every finished version."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT identifier, modified, download_url, revision, last_modified FROM versions WHERE status='done'"
            ).fetchall()
        return {VersionKey(r[0], r[1], r[2]): (r[3], r[4] or "") for r in rows}

    def done_stats(self) -> dict[str, dict]:
        """Output path -> what the run log keeps of each finished version (the header map's facts)."""
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(STATS)} FROM versions WHERE status='done'").fetchall()
        return {r[1]: dict(zip(STATS, r, strict=True)) for r in rows if r[1]}

    def last_sizes(self) -> dict[tuple[str, int | None], int]:
        """(identifier, position) -> bytes of that distribution's newest finished version."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT identifier, position, bytes FROM versions WHERE status IN ('done', 'pruned')"
                " AND bytes IS NOT NULL ORDER BY rowid"
            ).fetchall()
        return {(r[0], r[1]): r[2] for r in rows}  # later rows, newer versions, win

    def settled(self, run_id: str, version: CsvVersion) -> bool:
        """Whether the run has settled the version (done, or failed)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT outcome FROM run_items WHERE run_id=? AND identifier=? AND modified=? AND download_url=?",
                (run_id, *_key(version)),
            ).fetchone()
        return row is not None and row[0] in ("downloaded", "up_to_date", "failed")

    def note(self, run_id: str, version: CsvVersion, text: str) -> None:
        """A NOTE about one version of the run (verify, a repair); its outcome stays as it is."""
        with self.transaction() as db:
            db.execute(
                "UPDATE run_items SET error=? WHERE run_id=? AND identifier=? AND modified=? AND download_url=?",
                (text, run_id, *_key(version)),
            )

    def add_notes(self, run_id: str, notes: list[str]) -> None:
        """NOTE lines about the run as a whole, for its report."""
        if not notes:
            return
        with self.transaction() as db:
            row = db.execute("SELECT notes FROM runs WHERE run_id=?", (run_id,)).fetchone()
            kept = json.loads(row[0]) if row and row[0] else []
            db.execute("UPDATE runs SET notes=? WHERE run_id=?", (json.dumps(kept + notes), run_id))

    def record_failed(self, run_id: str, version: CsvVersion, error: str) -> tuple[int, int, int]:
        """Returns the run's progress after this version: (done, failed, total)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE versions SET status='failed', error=?, run_id=?, updated_at=?"
                " WHERE identifier=? AND modified=? AND download_url=? AND status<>'done'",
                (error, run_id, now(), *_key(version)),
            )
            self._set_outcome(db, run_id, version, "failed", error)
            return self._progress(db, run_id)

    @staticmethod
    def _set_outcome(db: Any, run_id: str, version: CsvVersion, outcome: str, error) -> None:
        db.execute(
            "UPDATE run_items SET outcome=?, error=? WHERE run_id=? AND identifier=? AND modified=? AND download_url=?",
            (outcome, error, run_id, *_key(version)),
        )

    def progress(self, run_id: str) -> tuple[int, int, int]:
        """(done, failed, total) CSV versions of the run so far."""
        with self._connect() as db:
            return self._progress(db, run_id)

    @staticmethod
    def _progress(db: Any, run_id: str) -> tuple[int, int, int]:
        return db.execute(
            "SELECT coalesce(sum(CASE WHEN outcome IN ('downloaded', 'up_to_date') THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN outcome='failed' THEN 1 ELSE 0 END), 0), count(*) FROM run_items WHERE run_id=?"
            " AND outcome NOT IN ('invalid', 'retired')",
            (run_id,),
        ).fetchone()

    def settle_queued(self, run_id: str) -> None:
        """Once every task of the run is complete, versions still queued were finished by someone else."""
        with self.transaction() as db:
            db.execute("UPDATE run_items SET outcome='up_to_date' WHERE run_id=? AND outcome='queued'", (run_id,))

    # -- the end of a run (see pipeline/close_run.py for the protocol) ------------------------------------

    def claim_close(self, run_id: str) -> tuple[dict, list[dict], set[str]] | None:
        """If the run is open and nothing of it is still queued, mark it 'closing' and return (run, items,
        retired identifiers). The write lock makes exactly one caller win."""
        with self.transaction() as db:
            run = db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            # 'interrupted' too: a run wrongly taken for dead by an overlapping one still closes properly.
            if run is None or run["status"] not in ("running", "interrupted"):
                return None
            if db.execute("SELECT 1 FROM run_items WHERE run_id=? AND outcome='queued' LIMIT 1", (run_id,)).fetchone():
                return None  # the common case, answered without reading the whole run
            items = self._report_items(db, run_id)
            retired = {row[0] for row in db.execute("SELECT identifier FROM retired")}
            db.execute("UPDATE runs SET status='closing' WHERE run_id=?", (run_id,))
            return dict(run), items, retired

    @staticmethod
    def _report_items(db: Any, run_id: str) -> list[dict]:
        """A run's items with what the report says of each (paths, sizes, schema change)."""
        items = db.execute(
            "SELECT i.*, v.status AS version_status, v.source_path, v.output_path, v.header_map_path,"
            " v.rows, v.bytes, v.sha256, v.source_encoding, v.released, v.described_by, v.revision,"
            " s.change AS schema_change, s.previous_modified, s.previous_url FROM run_items i"
            " LEFT JOIN versions v"
            " ON v.identifier=i.identifier AND v.modified=i.modified AND v.download_url=i.download_url"
            " LEFT JOIN schema_changes s ON s.run_id=i.run_id"
            " AND s.identifier=i.identifier AND s.modified=i.modified AND s.download_url=i.download_url"
            " WHERE i.run_id=? ORDER BY i.identifier, i.modified, i.download_url",
            (run_id,),
        ).fetchall()
        return [dict(item) for item in items]

    def closed_runs(self, before: str, every: bool) -> list[tuple[dict, list[dict]]]:
        """(run, items) of the finished runs other than `before` whose files a crash may have damaged: the
        newest one, or `every` one (the deep check)."""
        with self._connect() as db:
            runs = db.execute(
                "SELECT * FROM runs WHERE run_id<>? AND status IN ('succeeded', 'failed')"
                " ORDER BY started_at DESC, run_id DESC" + ("" if every else " LIMIT 1"),
                (before,),
            ).fetchall()
            return [(dict(run), self._report_items(db, run["run_id"])) for run in runs]

    def finish_run(
        self, run_id: str, status: str, counts: dict, finished_at: str, report_path: str | None, notes: list[str]
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET status=?, finished_at=?, discovered=?, downloaded=?, up_to_date=?,"
                " failed=?, invalid=?, retired=?, report_path=?, notes=? WHERE run_id=?",
                (
                    status,
                    finished_at,
                    counts["discovered"],
                    counts["downloaded"],
                    counts["up_to_date"],
                    counts["failed"],
                    counts["invalid"],
                    counts["retired"],
                    report_path,
                    json.dumps(notes),
                    run_id,
                ),
            )

    def prune_candidates(self, run_id: str, keep: int) -> list[str]:
        """Output paths of the finished versions beyond the newest `keep` of each dataset this run settled
        (newest = latest first seen; this run's own are always kept), and of revisions superseded in place."""
        paths = []
        with self._connect() as db:
            identifiers = [
                r[0]
                for r in db.execute(
                    "SELECT DISTINCT identifier FROM run_items WHERE run_id=?"
                    " AND outcome IN ('downloaded', 'up_to_date')",
                    (run_id,),
                )
            ]
            for identifier in identifiers:
                done = db.execute(
                    "SELECT rowid, output_path FROM versions WHERE identifier=? AND status='done' ORDER BY rowid DESC",
                    (identifier,),
                ).fetchall()
                current = {
                    r[0]
                    for r in db.execute(
                        "SELECT v.rowid FROM versions v JOIN run_items i ON v.identifier=i.identifier AND"
                        " v.modified=i.modified AND v.download_url=i.download_url WHERE i.run_id=? AND i.identifier=?",
                        (run_id, identifier),
                    )
                }
                older = [output_path for rowid, output_path in done if rowid not in current]
                paths += older[max(0, keep - (len(done) - len(older))) :]
                paths += [
                    r[0]
                    for r in db.execute(
                        "SELECT output_path FROM superseded WHERE identifier=? AND status='kept'", (identifier,)
                    )
                ]
        return paths

    def mark_pruned(self, output_paths: list[str]) -> None:
        """Only for folders really deleted: the log never calls files gone that are still there."""
        with self.transaction() as db:
            for path in output_paths:
                db.execute(
                    "UPDATE versions SET status='pruned', updated_at=? WHERE output_path=? AND status='done'",
                    (now(), path),
                )
                db.execute("UPDATE superseded SET status='pruned' WHERE output_path=?", (path,))


_PUT_ITEM = (
    "INSERT INTO run_items(run_id, identifier, modified, download_url, title, outcome, error)"
    " VALUES (?,?,?,?,?,?,?) ON CONFLICT(run_id, identifier, modified, download_url)"
    " DO UPDATE SET title=excluded.title, outcome=excluded.outcome, error=excluded.error"
)
_DONE = (
    "UPDATE versions SET status='done', error=NULL, source_path=?, output_path=?, header_map_path=?,"
    " source_encoding=?, rows=?, bytes=?, sha256=?, revision=?, run_id=COALESCE(?, run_id), updated_at=?"
    " WHERE identifier=? AND modified=? AND download_url=?"
)


STATS = ("source_path", "output_path", "header_map_path", "source_encoding", "rows", "bytes", "sha256")


def _done_values(version: CsvVersion, stats: dict, run_id: str | None) -> tuple:
    return (*(stats[f] for f in STATS), version.revision, run_id, now(), *_key(version))


def _key(version: CsvVersion) -> tuple[str, str, str]:
    return (version.identifier, version.modified, version.url)


def read_state(path: Path, theme: str, url: str = "") -> tuple[dict[str, str], set[tuple[str, str, str]], set[str]]:
    """Without writing anything: (identifier -> title of every dataset seen in the theme, keys of failed
    versions, retired identifiers). Empty when there is no log yet."""
    with engine_for(url, Path(path)).read_only() as db:
        if db is None:
            return {}, set(), set()
        titles = db.execute("SELECT identifier, max(title) FROM versions WHERE theme=? GROUP BY identifier", (theme,))
        known = {r[0]: r[1] for r in titles}
        failed = {
            (r[0], r[1], r[2])
            for r in db.execute("SELECT identifier, modified, download_url FROM versions WHERE status='failed'")
        }
        retired = {row[0] for row in db.execute("SELECT identifier FROM retired")}
    return known, failed, retired
