"""A stable view for consumers: <data>/latest/<name>.csv always holds a dataset's current normalized file,
latest/latest.json lists them and latest/index.csv lists them for a spreadsheet. Hard links (no admin rights
needed on NTFS), or copies where links fail, read-only like the versioned file, so an edit in place cannot
change the archive; each file is replaced atomically and on its own, so a file held open (Excel on Windows)
delays only itself, until the next run. What a crash can leave (a file of the wrong size, a list that does not
parse) is put right, with a note. In object storage each file is a server-side copy of its version's object."""

import csv
import io
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from pipeline import latest_typed
from pipeline.catalog import CsvVersion, VersionKey, file_name
from pipeline.durable import json_text
from pipeline.layout import LATEST, safe_component
from pipeline.storage import Storage, join
from pipeline.version_check import change_summary, file_sha256

MANIFEST = "latest.json"
INDEX = "index.csv"
INDEX_COLUMNS = ("identifier", "title", "file", "rows", "changes", "modified", "released", "data_dictionary", "retired")
EARLIER_INDEX_COLUMNS = tuple(name for name in INDEX_COLUMNS if name != "changes")  # before change reports


def latest_names(versions: list[CsvVersion]) -> dict[VersionKey, str]:
    """Every CSV distribution's name in latest/, from the catalog alone, so names never depend on which
    files a run happened to fetch: <identifier>.csv for a dataset's only CSV, else <identifier>__<file stem>.csv,
    with -<position> for file names the dataset lists twice."""
    by_dataset: dict[str, list[CsvVersion]] = defaultdict(list)
    for version in versions:
        by_dataset[version.identifier].append(version)
    names = {}
    for identifier, group in by_dataset.items():
        prefix = safe_component(identifier)
        if len(group) == 1:
            names[group[0].key] = f"{prefix}.csv"
            continue
        stems = [safe_component(PurePosixPath(file_name(v.url)).stem) for v in group]
        repeated = Counter(stems)
        for position, (version, stem) in enumerate(zip(group, stems, strict=True), start=1):
            names[version.key] = f"{prefix}__{stem}-{position}.csv" if repeated[stem] > 1 else f"{prefix}__{stem}.csv"
    return names


def _cannot(path: str, exc: OSError, holds: str) -> str:
    cause = "is in use" if isinstance(exc, PermissionError) else f"cannot be replaced ({exc.strerror or exc})"
    return f"latest/{path} {cause}; it still holds {holds}; retried next run"


def _holds(entry: dict | None) -> str:
    return f"version {entry['version']['modified']}" if entry else "nothing"


def publish(
    store: Storage,
    names: dict[VersionKey, str],
    entries: list[dict],
    retired: set[str],
    run_id: str,
    now: str,
    typed: bool = False,
) -> list[str]:
    """Point latest/ at each finished entry (identifier, modified, download_url, title, output_path, rows, sha256,
    released, described_by; changes: a new version's change report, {path, summary}, else None). `names` holds
    every CSV distribution of the catalog: a dataset in it keeps exactly those files, whatever failed today;
    datasets not in it (retired, or invalid today) keep theirs.
    With `typed`, each file's Parquet copy and latest/hospitals.duckdb too (pipeline/latest_typed.py).
    Returns a note for each file that could not be updated."""
    with store.lock(LATEST):  # one publisher at a time, whichever run it closes
        return _publish(store, names, entries, retired, run_id, now, typed)


def _publish(store: Storage, names, entries, retired, run_id, now, typed: bool) -> list[str]:
    old, problem = store.read_json(join(LATEST, MANIFEST))
    notes = [f"latest/{MANIFEST} {problem}; rebuilt from this run's catalog"] if problem else []
    datasets = {d["path"]: d for d in (old or {"datasets": []})["datasets"]}
    if problem := _index_problem(store.read_bytes(join(LATEST, INDEX)), len(datasets) if old else None):
        notes.append(f"latest/{INDEX} {problem}; written again")
    sizes = store.sizes(LATEST, fresh=True)
    old_rows, published = dict(datasets), {}
    for entry in entries:
        name = names[VersionKey(entry["identifier"], entry["modified"], entry["download_url"])]
        current, size = datasets.get(name), sizes.get(name)
        whole = size is not None and entry["bytes"] in (None, size)  # no size: logged by an early release
        if not (current and current["sha256"] == entry["sha256"] and whole):
            try:
                store.copy(store.key(entry["output_path"]), join(LATEST, name), read_only=True)
            except OSError as exc:
                notes.append(_cannot(name, exc, _holds(current)))
                continue
            if current and current["sha256"] == entry["sha256"] and size is not None:
                notes.append(f"latest/{name} had {size:,} bytes, its version {entry['bytes']:,}; put back")
        datasets[name] = {
            "identifier": entry["identifier"],
            "title": entry["title"],
            "version": {"modified": entry["modified"], "download_url": entry["download_url"]},
            "rows": entry["rows"],
            "sha256": entry["sha256"],
            "path": name,
            "released": entry["released"],
            "described_by": entry["described_by"],
            "changes": _changes(store, entry, current),
            "updated_run": run_id
            if current is None or current["sha256"] != entry["sha256"]
            else current.get("updated_run", run_id),
        }
        published[name] = entry
    in_catalog = {key.identifier for key in names}
    for name, item in list(datasets.items()):
        if item["identifier"] in in_catalog and name not in names.values():  # the catalog no longer lists it
            try:
                store.remove(join(LATEST, name))
                del datasets[name]
            except OSError as exc:
                notes.append(
                    f"latest/{name} is no longer in the catalog but cannot be removed "
                    f"({exc.strerror or exc}); retried next run"
                )
    for item in datasets.values():
        item["retired"] = item["identifier"] in retired
    database = (old or {}).get("database")
    if typed:
        typed_notes, database = latest_typed.publish_typed(store, datasets, old_rows, published, sizes, database)
        notes += typed_notes
    elif database is not None:
        notes += latest_typed.withdraw_typed(store, datasets, sizes)
        database = None
    rows = sorted(datasets.values(), key=lambda d: d["path"])
    manifest = {"generated_at": now, "run_id": run_id, "datasets": rows}
    if database is not None:
        manifest["database"] = database
    for name, write in ((MANIFEST, _json_writer(manifest)), (INDEX, _index_writer(rows))):
        try:
            store.write_file(join(LATEST, name), write)
        except OSError as exc:
            notes.append(_cannot(name, exc, "the previous run's list"))
    return notes


def _changes(store: Storage, entry: dict, current: dict | None) -> str | None:
    """The figure of the entry's change report: a new version's, as the run read it; else as latest.json has it
    for the same version; else (latest.json rebuilt, or written before change reports) read from its folder."""
    if entry.get("changes"):
        return entry["changes"]["summary"]
    version = {"modified": entry["modified"], "download_url": entry["download_url"]}
    if current is not None and "changes" in current and current["version"] == version:
        return current["changes"]
    if entry.get("outcome") == "downloaded":  # read by the run already: it has none
        return None
    found = change_summary(store, entry)
    return found["summary"] if found else None


def _json_writer(data: dict):
    def write(temp: Path) -> None:
        temp.write_text(json_text(data), encoding="utf-8", newline="")

    return write


def _index_problem(raw: bytes | None, listed: int | None) -> str | None:
    """What is wrong with an index.csv that should list `listed` files, if known (it is written again anyway)."""
    if raw is None:
        return None
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    except (UnicodeError, csv.Error) as exc:
        return f"does not parse ({exc})"
    if not rows or tuple(rows[0]) not in (INDEX_COLUMNS, EARLIER_INDEX_COLUMNS):
        return "has no header row" if not rows else "does not start with its header row"
    if listed is not None and len(rows) - 1 != listed:
        return f"lists {len(rows) - 1} files, latest.json {listed}"
    if any(len(row) != len(rows[0]) for row in rows):
        return "has a row cut short"
    return None


def check_hashes(store: Storage) -> tuple[list[str], int]:
    """The deep check of latest/: a file whose bytes differ from latest.json's sha256 is deleted, so the run's
    publish puts its version back. Returns a note for each, and how many files were hashed."""
    manifest, _ = store.read_json(join(LATEST, MANIFEST))
    notes, hashed, present = [], 0, store.sizes(LATEST, fresh=True)
    files = [(item["path"], item["sha256"]) for item in (manifest or {}).get("datasets", [])]
    files += [(p["path"], p["sha256"]) for item in (manifest or {}).get("datasets", []) if (p := item.get("parquet"))]
    for path, sha256 in files:
        if path not in present:
            continue
        hashed += 1
        key = join(LATEST, path)
        if file_sha256(store, key) != sha256:
            try:
                store.remove(key)
                notes.append(f"latest/{path} does not match latest.json's sha256; put back")
            except OSError as exc:
                notes.append(_cannot(path, exc, "bytes that differ from its version"))
    return notes, hashed


def _index_writer(rows: list[dict]):
    """index.csv: what each opaque file name is, for analysts who open latest/ in a spreadsheet."""

    def write(temp: Path) -> None:
        # utf-8-sig: Excel reads a BOM-less UTF-8 CSV as the local code page.
        with open(temp, "w", encoding="utf-8-sig", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(INDEX_COLUMNS)
            for d in rows:
                writer.writerow(
                    [
                        d["identifier"],
                        d["title"],
                        d["path"],
                        d["rows"],
                        d.get("changes") or "",
                        d["version"]["modified"],
                        d["released"],
                        d["described_by"],
                        "yes" if d["retired"] else "",
                    ]
                )

    return write
