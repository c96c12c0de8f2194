"""Whether a version folder holds a finished version, checked as a crash can leave it: a local file renamed into
place before its data reached the disk is zero-length or cut short under its final name. The cheap check (every
run) lists, stats and parses; the deep check (on demand) also hashes. Neither writes anything.

A version's data (the normalized file and what vouches for it), its change report and its typed files (with
`[analytics] parquet = true`) are checked apart: a report or typed file lost or damaged is made again from the
files that are there, without downloading anything.

In object storage a key is visible only whole, so there a version whose five files are all listed (seven, typed)
is finished without reading any of them: a no-op day costs a listing, not three reads per version."""

import hashlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from pipeline import layout
from pipeline.header_rewrite import CHUNK, rewrite_csv
from pipeline.storage import Storage, parent

FILES = ("header_map.json", "normalized.csv", "source.csv", "source.scan.json")
REPORT = "changes.json"  # written last; changes.csv before it, when there is an earlier version
TYPED = "dictionary.json"  # written after normalized.parquet, which it vouches for
PARQUET = "normalized.parquet"
VOUCHED_BY = {"changes.csv": REPORT, PARQUET: TYPED}  # a file, and the one that vouches for it


@dataclass
class VersionCheck:
    header_map: dict | None = None  # as parsed, when it parses (not read where the listing alone decides)
    scan: dict | None = None
    problems: list[str] = field(default_factory=list)  # what is damaged, one phrase per file, for a NOTE
    source_whole: bool = False
    normalized_whole: bool = False
    scan_ok: bool = True  # absent (older downloads of non-UTF-8 files) or parsed, matching the source
    source_dropped: bool = False  # [retention] drop_source deleted it once the version was finished
    report: dict | None = None  # changes.json as parsed (not read where the listing alone decides)
    report_ok: bool = False  # changes.json parses, is of this normalized file, and its changes.csv has its size
    typed_wanted: bool = False  # [analytics] parquet
    typed: dict | None = None  # dictionary.json as parsed (not read where the listing alone decides)
    typed_ok: bool = False  # dictionary.json parses, is of this normalized file, and its Parquet file has its size

    @property
    def complete(self) -> bool:
        """The version's data is whole: nothing needs downloading or normalizing."""
        return self.normalized_whole and self.scan_ok and (self.source_dropped or self.source_whole)

    @property
    def finished(self) -> bool:
        """Complete, and its change report and (if wanted) typed files too: nothing to do."""
        return self.complete and self.report_ok and (self.typed_ok or not self.typed_wanted)

    @property
    def repair(self) -> str:
        """What the run does about it: the same as for a version never finished, from what is still whole."""
        if self.complete:
            redone = [] if self.report_ok else ["change report"]
            redone += [] if self.typed_ok or not self.typed_wanted else ["typed file"]
            return f"{' and '.join(redone) or 'nothing'} made again"
        return "made again from source.csv" if self.source_whole else "downloaded again"


def _sizes_problem(name: str, size: int | None, recorder: str, recorded: int) -> str | None:
    if size is None:
        return f"{name} is missing"
    if size != recorded:
        return f"{name} has {size:,} bytes, {recorder} says {recorded:,}"
    return None


def check_version(store: Storage, folder: str, fresh: bool = False, typed: bool = False) -> VersionCheck:
    """A version is finished when its header map parses, its normalized file has the recorded size, and its
    source (unless dropped) has the size its scan or header map recorded; its change report, and with `typed` its
    typed files, are checked too. With `fresh` (under the folder's lock, where a task decides to do the work) an
    answer from a cached listing that says "not finished" is asked again of the store: another machine may have
    finished it since. Elsewhere (scheduling, planning) the cached answer stands: a version found done under the
    lock is recorded as up to date."""
    cached = store.cached(folder)
    check = _check(store, folder, store.sizes(folder), typed)
    if not check.finished and cached and fresh:
        check = _check(store, folder, store.sizes(folder, fresh=True), typed)
    return check


def _check(store: Storage, folder: str, sizes: dict[str, int], typed: bool) -> VersionCheck:
    if store.whole_when_visible and all(name in sizes for name in (*FILES, REPORT)):
        check = VersionCheck(source_whole=True, normalized_whole=True, report_ok=True, typed_wanted=typed)
        if typed:
            _check_typed(store, folder, sizes, check)
        return check
    downloaded = {"source.csv", "source.scan.json"} <= sizes.keys()
    if store.whole_when_visible and downloaded and "header_map.json" not in sizes:
        return VersionCheck(source_whole=True, typed_wanted=typed)  # not normalized yet: Normalize reads its scan
    check = VersionCheck(typed_wanted=typed)
    if "header_map.json" in sizes:
        check.header_map, problem = store.read_json(layout.header_map(folder))
        if problem or (check.header_map is not None and not {"bytes", "sha256"} <= check.header_map.keys()):
            check.header_map = None
            check.problems.append(f"header_map.json {problem or 'lacks the sizes'}")
    check.source_dropped = check.header_map is not None and check.header_map.get("source_path") is None
    if "source.scan.json" in sizes:
        check.scan, problem = store.read_json(layout.source_scan(folder))
        if problem or (check.scan is not None and "source_bytes" not in check.scan):
            check.scan, check.scan_ok = None, False
            check.problems.append(f"source.scan.json {problem or 'lacks the source size'}")

    source_size, recorded = sizes.get("source.csv"), None
    if check.scan is not None:
        recorded, recorder = check.scan["source_bytes"], "source.scan.json"
    elif check.header_map is not None and "source_bytes" in check.header_map:
        recorded, recorder = check.header_map["source_bytes"], "header_map.json"
    if recorded is None:
        check.source_whole = source_size is not None  # written by an earlier release that recorded no size
    elif problem := _sizes_problem("source.csv", source_size, recorder, recorded):
        if check.header_map is not None and not check.source_dropped:  # only a finished version's is damaged
            check.problems.append(problem)
        check.scan_ok = check.scan is None and check.scan_ok  # a scan of other bytes vouches for nothing
    else:
        check.source_whole = True

    if check.header_map is not None:
        recorded = check.header_map["bytes"]
        problem = _sizes_problem("normalized.csv", sizes.get("normalized.csv"), "header_map.json", recorded)
        check.normalized_whole = problem is None
        if problem:
            check.problems.append(problem)
        _check_report(store, folder, sizes, check)
        if typed:
            _check_typed(store, folder, sizes, check)
    return check


def _check_report(store: Storage, folder: str, sizes: dict[str, int], check: VersionCheck) -> None:
    """changes.json parses, was made from the normalized file the header map describes, and the changes.csv it
    vouches for has the size it recorded. A header map without `changes_against` was written before change
    reports existed: its report is made without a NOTE."""
    assert check.header_map is not None
    expected = "changes_against" in check.header_map
    if REPORT not in sizes:
        if expected:
            check.problems.append(f"{REPORT} is missing")
        return
    if store.whole_when_visible:  # listed is enough: written last, whole or absent (no read on a no-op day)
        check.report_ok = True
        return
    check.report, problem = store.read_json(layout.changes_json(folder))
    if check.report is not None and check.report.get("normalized_sha256") != check.header_map["sha256"]:
        check.report, problem = None, "was made from other bytes than normalized.csv"
    if check.report is not None and (recorded := check.report.get("cells_bytes")) is not None:
        problem = _sizes_problem("changes.csv", sizes.get("changes.csv"), REPORT, recorded)
    check.report_ok = check.report is not None and problem is None
    if problem:
        check.problems.append(problem if problem.startswith("changes.csv") else f"{REPORT} {problem}")


def _check_typed(store: Storage, folder: str, sizes: dict[str, int], check: VersionCheck) -> None:
    """dictionary.json parses, was made from the normalized file the header map describes, and the Parquet file it
    vouches for has the size it recorded. Neither file there is a version not typed yet (the setting was off, or
    the last try failed with a NOTE): made without another NOTE; a Parquet file alone is a kill's or a loss."""
    if TYPED not in sizes:
        if PARQUET in sizes:
            check.problems.append(f"{TYPED} is missing")
        return
    if store.whole_when_visible:  # listed is enough: written last, whole or absent
        check.typed_ok = True
        return
    check.typed, problem = store.read_json(layout.dictionary_json(folder))
    made_from = check.typed.get("normalized_sha256") if check.typed is not None else None
    if check.typed is not None and check.header_map and made_from != check.header_map["sha256"]:
        check.typed, problem = None, "was made from other bytes than normalized.csv"
    if check.typed is not None:
        problem = _sizes_problem(PARQUET, sizes.get(PARQUET), TYPED, check.typed.get("parquet_bytes", -1))
    check.typed_ok = check.typed is not None and problem is None
    if problem:
        check.problems.append(problem if problem.startswith(PARQUET) else f"{TYPED} {problem}")


def typed_of(store: Storage, folder: str, check: VersionCheck) -> dict | None:
    """The typed record of a finished version: as the check parsed it, or read now where the listing decided."""
    if check.typed is None and check.typed_ok:
        check.typed = store.read_json(layout.dictionary_json(folder))[0]
    return check.typed


def header_map_of(store: Storage, folder: str, check: VersionCheck) -> dict | None:
    """The header map of a finished version: as the check parsed it, or read now where the listing decided."""
    if check.header_map is None and check.complete:
        check.header_map = store.read_json(layout.header_map(folder))[0]
    return check.header_map


class _HashOnly:
    """A seekable sink for rewrite_csv when only the result's sha256 is wanted."""

    def write(self, data: bytes) -> int:
        return len(data)

    def seek(self, *_) -> int:
        return 0

    def truncate(self, *_) -> int:
        return 0


def stream_sha256(file) -> str:
    """The sha256 of an open binary file, read in CHUNK pieces."""
    digest = hashlib.sha256()
    while chunk := file.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(store: Storage, key: str) -> str:
    with store.open_read(key) as file:
        return stream_sha256(file)


def change_summary(store: Storage, item: dict) -> dict | None:
    """A finished version's change report as the run report links it, {path, summary}; None without one (it could
    not be made). `item` has the version's output_path."""
    folder = parent(store.key(item["output_path"]))
    report, _ = store.read_json(layout.changes_json(folder))
    if report is None or "summary" not in report:
        return None
    return {"path": store.location(layout.changes_json(folder)), "summary": report["summary"]}


def report_of(store: Storage, folder: str, check: VersionCheck) -> dict | None:
    """The change report of a finished version: as the check parsed it, or read now where the listing decided."""
    if check.report is None and check.report_ok:
        check.report = store.read_json(layout.changes_json(folder))[0]
    return check.report


def deep_check(store: Storage, folder: str, check: VersionCheck) -> list[str]:
    """Hash what the cheap check found whole against the header map's sha256: the normalized file, and the
    source by the normalized file it gives; the changed cells against changes.json's sha256, the Parquet file
    against dictionary.json's. Returns the keys of the files that differ."""
    header_map = header_map_of(store, folder, check)
    if header_map is None:
        return []
    expected, damaged = header_map["sha256"], []
    normalized = layout.normalized_csv(folder)
    if check.normalized_whole and file_sha256(store, normalized) != expected:
        damaged.append(normalized)
    source = layout.source_csv(folder)
    if check.source_whole and header_map.get("source_path") is not None and store.size(source) is not None:
        with store.local_copy(source) as path, open(path, "rb") as src:  # the rewrite seeks: a local file
            try:
                matches = rewrite_csv(src, _HashOnly()).sha256 == expected  # type: ignore[arg-type]
            except ValueError:  # no longer a text CSV at all
                matches = False
        if not matches:
            damaged.append(source)
    report = report_of(store, folder, check) if check.report_ok else None
    cells = layout.changes_csv(folder)
    if report and report.get("cells_sha256") and file_sha256(store, cells) != report["cells_sha256"]:
        damaged.append(cells)
    typed = typed_of(store, folder, check) if check.typed_ok else None
    parquet = layout.normalized_parquet(folder)
    if typed and file_sha256(store, parquet) != typed["parquet_sha256"]:
        damaged.append(parquet)
    return damaged


def hash_problem(key: str) -> str:
    name = PurePosixPath(key).name
    return f"{name} does not match {VOUCHED_BY.get(name, 'header_map.json')}'s sha256"
