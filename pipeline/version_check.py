"""Whether a version folder holds a finished version, checked as a crash can leave it: a file renamed into place
before its data reached the disk is zero-length or cut short under its final name. The cheap check (every run)
stats and parses; the deep check (on demand) also hashes. Neither writes anything."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import layout
from pipeline.durable import read_json
from pipeline.header_rewrite import CHUNK, rewrite_csv


@dataclass
class VersionCheck:
    header_map: dict | None = None  # as parsed, when it parses
    scan: dict | None = None
    problems: list[str] = field(default_factory=list)  # what is damaged, one phrase per file, for a NOTE
    source_whole: bool = False
    normalized_whole: bool = False
    scan_ok: bool = True  # absent (older downloads of non-UTF-8 files) or parsed, matching the source

    @property
    def source_dropped(self) -> bool:
        return self.header_map is not None and self.header_map.get("source_path") is None

    @property
    def complete(self) -> bool:
        return self.normalized_whole and self.scan_ok and (self.source_dropped or self.source_whole)

    @property
    def repair(self) -> str:
        """What the run does about it: the same as for a version never finished, from what is still whole."""
        return "made again from source.csv" if self.source_whole else "downloaded again"


def file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _sizes_problem(path: Path, size: int | None, recorder: str, recorded: int) -> str | None:
    if size is None:
        return f"{path.name} is missing"
    if size != recorded:
        return f"{path.name} has {size:,} bytes, {recorder} says {recorded:,}"
    return None


def check_version(folder: Path) -> VersionCheck:
    """Stat and parse only: a version is finished when its header map parses, its normalized file has the
    recorded size, and its source (unless dropped) has the size its scan or header map recorded."""
    check = VersionCheck()
    check.header_map, problem = read_json(layout.header_map(folder))
    if problem or (check.header_map is not None and not {"bytes", "sha256"} <= check.header_map.keys()):
        check.header_map = None
        check.problems.append(f"header_map.json {problem or 'lacks the sizes'}")
    check.scan, problem = read_json(layout.source_scan(folder))
    if problem or (check.scan is not None and "source_bytes" not in check.scan):
        check.scan, check.scan_ok = None, False
        check.problems.append(f"source.scan.json {problem or 'lacks the source size'}")

    source = layout.source_csv(folder)
    source_size, recorded = file_size(source), None
    if check.scan is not None:
        recorded, recorder = check.scan["source_bytes"], "source.scan.json"
    elif check.header_map is not None and "source_bytes" in check.header_map:
        recorded, recorder = check.header_map["source_bytes"], "header_map.json"
    if recorded is None:
        check.source_whole = source_size is not None  # written by an earlier release that recorded no size
    elif problem := _sizes_problem(source, source_size, recorder, recorded):
        if check.header_map is not None and not check.source_dropped:  # only a finished version's is damaged
            check.problems.append(problem)
        check.scan_ok = check.scan is None and check.scan_ok  # a scan of other bytes vouches for nothing
    else:
        check.source_whole = True

    if check.header_map is not None:
        normalized = layout.normalized_csv(folder)
        problem = _sizes_problem(normalized, file_size(normalized), "header_map.json", check.header_map["bytes"])
        check.normalized_whole = problem is None
        if problem:
            check.problems.append(problem)
    return check


class _HashOnly:
    """A seekable sink for rewrite_csv when only the result's sha256 is wanted."""

    def write(self, data: bytes) -> int:
        return len(data)

    def seek(self, *_) -> int:
        return 0

    def truncate(self, *_) -> int:
        return 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def deep_check(folder: Path, check: VersionCheck) -> list[Path]:
    """Hash what the cheap check found whole against the header map's sha256: the normalized file, and the
    source by the normalized file it gives. Returns the files that differ."""
    if check.header_map is None:
        return []
    expected, damaged = check.header_map["sha256"], []
    normalized = layout.normalized_csv(folder)
    if check.normalized_whole and file_sha256(normalized) != expected:
        damaged.append(normalized)
    source = layout.source_csv(folder)
    if check.source_whole and not check.source_dropped and source.exists():
        with open(source, "rb") as src:
            try:
                matches = rewrite_csv(src, _HashOnly()).sha256 == expected  # type: ignore[arg-type]
            except ValueError:  # no longer a text CSV at all
                matches = False
        if not matches:
            damaged.append(source)
    return damaged


def hash_problem(path: Path) -> str:
    return f"{path.name} does not match header_map.json's sha256"
