"""A stable view for consumers: <data>/latest/<name>.csv always holds a dataset's current normalized file,
latest/latest.json lists them and latest/index.csv lists them for a spreadsheet. Hard links (no admin rights
needed on NTFS), or copies where links fail, read-only like the versioned file, so an edit in place cannot
change the archive; each file is replaced atomically and on its own, so a file held open (Excel on Windows)
delays only itself, until the next run. What a crash can leave (a file of the wrong size, a list that does not
parse) is put right, with a note."""

import csv
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from filelock import FileLock

from pipeline.catalog import CsvVersion, VersionKey, file_name
from pipeline.durable import TEMP_MARK, atomic_path, json_text, read_json, remove
from pipeline.layout import safe_component
from pipeline.version_check import file_sha256, file_size

MANIFEST = "latest.json"
INDEX = "index.csv"
INDEX_COLUMNS = ("identifier", "title", "file", "rows", "modified", "released", "data_dictionary", "retired")


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


def _replace(dest: Path, write, read_only: bool = False) -> None:
    """Write via a temp file beside `dest`, then rename over it durably; the temp never outlives a failure."""
    with atomic_path(dest, read_only) as temp:
        write(temp)


def _link_or_copy(source: Path):
    def write(temp: Path) -> None:
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)

    return write


def _cannot(path: str, exc: OSError, holds: str) -> str:
    cause = "is in use" if isinstance(exc, PermissionError) else f"cannot be replaced ({exc.strerror or exc})"
    return f"latest/{path} {cause}; it still holds {holds}; retried next run"


def _holds(entry: dict | None) -> str:
    return f"version {entry['version']['modified']}" if entry else "nothing"


def publish(
    folder: Path, names: dict[VersionKey, str], entries: list[dict], retired: set[str], run_id: str, now: str
) -> list[str]:
    """Point latest/ at each finished entry (identifier, modified, download_url, title, output_path, rows, sha256,
    released, described_by). `names` holds every CSV distribution of the catalog: a dataset in it keeps exactly
    those files, whatever failed today; datasets not in it (retired, or invalid today) keep theirs.
    Returns a note for each file that could not be updated."""
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock"):  # one publisher at a time, whichever run it closes
        # A killed publisher's temp files (named *.tmp by earlier releases).
        for stale in [*folder.glob(f"*{TEMP_MARK}*"), *folder.glob("*.tmp")]:
            remove(stale)
        return _publish(folder, names, entries, retired, run_id, now)


def _publish(folder, names, entries, retired, run_id, now) -> list[str]:
    old, problem = read_json(folder / MANIFEST)
    notes = [f"latest/{MANIFEST} {problem}; rebuilt from this run's catalog"] if problem else []
    datasets = {d["path"]: d for d in (old or {"datasets": []})["datasets"]}
    if problem := _index_problem(folder / INDEX, len(datasets) if old else None):
        notes.append(f"latest/{INDEX} {problem}; written again")
    for entry in entries:
        name = names[VersionKey(entry["identifier"], entry["modified"], entry["download_url"])]
        dest, current = folder / name, datasets.get(name)
        size = file_size(dest)
        whole = size is not None and entry["bytes"] in (None, size)  # no size: logged by an early release
        if not (current and current["sha256"] == entry["sha256"] and whole):
            try:
                _replace(dest, _link_or_copy(Path(entry["output_path"])), read_only=True)
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
            "updated_run": run_id
            if current is None or current["sha256"] != entry["sha256"]
            else current.get("updated_run", run_id),
        }
    in_catalog = {key.identifier for key in names}
    for name, item in list(datasets.items()):
        if item["identifier"] in in_catalog and name not in names.values():  # the catalog no longer lists it
            try:
                remove(folder / name)
                del datasets[name]
            except OSError as exc:
                notes.append(
                    f"latest/{name} is no longer in the catalog but cannot be removed "
                    f"({exc.strerror or exc}); retried next run"
                )
    for item in datasets.values():
        item["retired"] = item["identifier"] in retired
    rows = sorted(datasets.values(), key=lambda d: d["path"])
    manifest = {"generated_at": now, "run_id": run_id, "datasets": rows}
    for name, write in ((MANIFEST, _json_writer(manifest)), (INDEX, _index_writer(rows))):
        try:
            _replace(folder / name, write)
        except OSError as exc:
            notes.append(_cannot(name, exc, "the previous run's list"))
    return notes


def _json_writer(data: dict):
    def write(temp: Path) -> None:
        temp.write_text(json_text(data), encoding="utf-8", newline="")

    return write


def _index_problem(path: Path, listed: int | None) -> str | None:
    """What is wrong with an index.csv that should list `listed` files, if known (it is written again anyway)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            rows = list(csv.reader(file))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError, csv.Error) as exc:
        return f"does not parse ({exc})"
    if not rows or tuple(rows[0]) != INDEX_COLUMNS:
        return "has no header row" if not rows else "does not start with its header row"
    if listed is not None and len(rows) - 1 != listed:
        return f"lists {len(rows) - 1} files, latest.json {listed}"
    if any(len(row) != len(INDEX_COLUMNS) for row in rows):
        return "has a row cut short"
    return None


def check_hashes(folder: Path) -> tuple[list[str], int]:
    """The deep check of latest/: a file whose bytes differ from latest.json's sha256 is deleted, so the run's
    publish puts its version back. Returns a note for each, and how many files were hashed."""
    manifest, _ = read_json(folder / MANIFEST)
    notes, hashed = [], 0
    for item in (manifest or {}).get("datasets", []):
        path = folder / item["path"]
        if not path.exists():
            continue
        hashed += 1
        if file_sha256(path) != item["sha256"]:
            try:
                remove(path)
                notes.append(f"latest/{item['path']} does not match latest.json's sha256; put back")
            except OSError as exc:
                notes.append(_cannot(item["path"], exc, "bytes that differ from its version"))
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
                        d["version"]["modified"],
                        d["released"],
                        d["described_by"],
                        "yes" if d["retired"] else "",
                    ]
                )

    return write
