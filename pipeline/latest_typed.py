"""The typed side of latest/ (`[analytics] parquet = true`): latest/<name>.parquet beside each latest/<name>.csv,
copied from the same version's normalized.parquet, and latest/hospitals.duckdb, a view per file over the Parquet
files by paths relative to the data folder (`latest/<name>.parquet`), so that it works wherever the folder is, or
a copy of its latest/ (`aws s3 sync s3://bucket/prefix/latest latest`), with DuckDB started in that folder.

A dataset whose current version has no typed file (it could not be made: a NOTE of its run) has no Parquet file
and no view, never one of another version. The database is made again only when a file or view changed, or it
is missing or not the size latest.json records; like every file of latest/ it is replaced on its own, so one an
analyst holds open (Windows) stays as it was until the next run. Knows latest/ and the version folders' files."""

import re
import tempfile
from pathlib import Path, PurePosixPath

from pipeline import layout
from pipeline.layout import LATEST
from pipeline.storage import Storage, join, parent

DATABASE = "hospitals.duckdb"
_NOT_SQL = re.compile(r"[^a-z0-9_]+")


def view_name(csv_name: str) -> str:
    """The view of latest/<csv_name>: `ds_` and the file's stem with anything but a-z, 0-9 and _ as `_`
    (48nr-hqxx.csv -> ds_48nr_hqxx), a name SQL takes unquoted; unique, as the file names are."""
    return "ds_" + _NOT_SQL.sub("_", PurePosixPath(csv_name).stem.lower())


def parquet_name(csv_name: str) -> str:
    return str(PurePosixPath(csv_name).with_suffix(".parquet"))


def publish_typed(
    store: Storage,
    rows: dict[str, dict],
    old_rows: dict[str, dict],
    entries: dict[str, dict],
    sizes: dict[str, int],
    old_database: dict | None,
) -> tuple[list[str], dict | None]:
    """Point latest/<name>.parquet at each finished entry's typed file (`entries`: latest name -> the run's entry,
    whose row in `rows` latest.py has just written; `old_rows` and `old_database` as latest.json had them), and
    make the database again if anything changed. Sets each row's `parquet`; returns notes and the database's
    record for latest.json (None: made again next run)."""
    notes: list[str] = []
    changed = False
    for name, entry in entries.items():
        row, old, target = rows[name], old_rows.get(name) or {}, parquet_name(name)
        kept = old.get("parquet") if old.get("sha256") == entry["sha256"] else None
        if kept and sizes.get(target) == kept["bytes"]:
            row["parquet"] = kept
            continue
        if kept and target in sizes:  # what a power cut or another writer left
            notes.append(f"latest/{target} had {sizes[target]:,} bytes, its version {kept['bytes']:,}; put back")
        changed = True
        if parquet := _put(store, name, entry, notes):
            row["parquet"] = parquet
    listed = {row["parquet"]["path"] for row in rows.values() if row.get("parquet")}
    for gone in (n for n in sizes if n.endswith(".parquet") and n not in listed):  # of no file in latest.json now
        _remove(store, gone, notes)
        changed = True
    if old_database is not None and DATABASE in sizes and sizes[DATABASE] != old_database["bytes"]:
        notes.append(
            f"latest/{DATABASE} has {sizes[DATABASE]:,} bytes, latest.json says {old_database['bytes']:,}; made again"
        )
        changed = True
    if changed or old_database is None or DATABASE not in sizes:
        return notes, _write_database(store, rows, notes)
    return notes, old_database


def _put(store: Storage, name: str, entry: dict, notes: list[str]) -> dict | None:
    """latest/<name>.parquet from the entry's version, and what latest.json says of it; None when the version has
    no whole typed file of its normalized file (the old file is then deleted: none beats one of another version)."""
    target, folder = parquet_name(name), parent(store.key(entry["output_path"]))
    typed, _ = store.read_json(layout.dictionary_json(folder))
    # Asked of the store itself: another process may have typed it since this one listed the folders.
    size = store.sizes(folder, fresh=True).get("normalized.parquet") if typed is not None else None
    if typed is None or size != typed.get("parquet_bytes") or typed.get("normalized_sha256") != entry["sha256"]:
        return None
    try:
        store.copy(layout.normalized_parquet(folder), join(LATEST, target), read_only=True)
    except OSError as exc:
        notes.append(f"latest/{target} {_cause(exc)}; its view is left out until the next run")
        return None
    return {
        "path": target,
        "bytes": typed["parquet_bytes"],
        "sha256": typed["parquet_sha256"],
        "view": view_name(name),
        "columns": [{"column": c["column"], "type": c["type"]} for c in typed["columns"]],
    }


def _remove(store: Storage, name: str, notes: list[str]) -> None:
    try:
        store.remove(join(LATEST, name))
    except OSError as exc:  # held open (Windows): its view is gone already, the file goes next run
        notes.append(f"latest/{name} {_cause(exc)}; deleted next run")


def _cause(exc: OSError) -> str:
    return "is in use" if isinstance(exc, PermissionError) else f"cannot be replaced ({exc.strerror or exc})"


def _write_database(store: Storage, rows: dict[str, dict], notes: list[str]) -> dict | None:
    from pipeline import typed_files  # DuckDB: imported only when the database is made again

    views = [
        {**row["parquet"], "path": f"{LATEST}/{row['parquet']['path']}", "identifier": row["identifier"]}
        | {"title": row["title"], "rows": row["rows"]}
        for _, row in sorted(rows.items())
        if row.get("parquet")
    ]
    sizes: list[int] = []

    def write(temp: Path) -> None:
        with tempfile.TemporaryDirectory() as work:
            typed_files.write_database(temp, views, Path(work))
        sizes.append(temp.stat().st_size)

    try:
        store.write_file(join(LATEST, DATABASE), write)
    except OSError as exc:
        notes.append(f"latest/{DATABASE} {_cause(exc)}; retried next run")
        return None
    except typed_files.duckdb.Error as exc:
        notes.append(f"latest/{DATABASE} cannot be made ({str(exc).splitlines()[0]}); retried next run")
        return None
    return {"path": DATABASE, "bytes": sizes[0], "views": len(views)}


def withdraw_typed(store: Storage, rows: dict[str, dict], sizes: dict[str, int]) -> list[str]:
    """`[analytics] parquet` turned off: the typed files of latest/ would no longer follow its CSVs, so they go."""
    for row in rows.values():
        row.pop("parquet", None)
    notes = [f"latest/: [analytics] parquet is off; its Parquet files and {DATABASE} deleted"]
    for name in sizes:
        if name.endswith(".parquet") or name == DATABASE:
            _remove(store, name, notes)
    return notes
