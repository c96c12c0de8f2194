"""Where things live under the data folder; every key the pipeline writes is built here. Keys are POSIX paths
relative to the data folder (pipeline/storage/ maps them to files or objects).

<data>/runlog.sqlite                       (a local data folder's default run log)
<data>/runs/<run_id>/catalog.json          what the metastore said, as parsed for this run
<data>/reports/<run_id>.json               the run report
<data>/reports/plan-<run_id>.json          a dry run's plan
<data>/datasets/<identifier>/<modified>-<url fingerprint>/
    source.csv  source.scan.json  normalized.csv  header_map.json  changes.csv  changes.json
    normalized.parquet  dictionary.json      (with [analytics] parquet = true)
    (normalized.staged: on disk, the normalized file written during the download, until Normalize moves it in
    place; Storage.staged)
"""

import hashlib
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^a-z0-9_-]+")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
MAX_COMPONENT = 48  # keeps whole paths far below Windows' 260 characters


def fingerprint(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def safe_component(text: str) -> str:
    """A folder name any filesystem accepts; text that had to change gets a fingerprint so names stay unique."""
    safe = _UNSAFE.sub("_", text.lower()).strip("_-")[:MAX_COMPONENT]
    if safe and safe == text and safe not in _WINDOWS_RESERVED:
        return safe
    return f"{safe or 'x'}-{fingerprint(text)}"


def version_dir(identifier: str, modified: str, url: str, revision: str = "") -> str:
    """A dataset version is (identifier, modified, download URL): each gets its own folder, and so does a
    file found replaced in place (`revision`, its new Last-Modified)."""
    key = f"{url}\n{revision}" if revision else url
    return f"datasets/{safe_component(identifier)}/{safe_component(modified)}-{fingerprint(key)}"


def _in(version: str, name: str) -> str:
    return f"{version}/{name}"  # a version folder as version_dir() makes it: no trailing slash to normalize


def source_csv(version: str) -> str:
    return _in(version, "source.csv")


def source_scan(version: str) -> str:
    """What the download's scan found: lets Normalize copy the data without reading it in Python."""
    return _in(version, "source.scan.json")


def normalized_csv(version: str) -> str:
    return _in(version, "normalized.csv")


def header_map(version: str) -> str:
    return _in(version, "header_map.json")


def runlog_db(data_dir: Path) -> Path:
    return Path(data_dir) / "runlog.sqlite"


def catalog_snapshot(run_id: str) -> str:
    return f"runs/{safe_component(run_id)}/catalog.json"


def report(run_id: str) -> str:
    return f"reports/{safe_component(run_id)}.json"


def plan_report(run_id: str) -> str:
    return f"reports/plan-{safe_component(run_id)}.json"


LATEST = "latest"


def changes_json(version: str) -> str:
    """The change report's summary against the version this one replaces: written last, it vouches for the CSV."""
    return _in(version, "changes.json")


def changes_csv(version: str) -> str:
    """The change report's changed cells: the key's columns, column, old, new."""
    return _in(version, "changes.csv")


def normalized_parquet(version: str) -> str:
    """The typed copy of normalized.csv (`[analytics] parquet`): written first, vouched for by dictionary.json."""
    return _in(version, "normalized.parquet")


def dictionary_json(version: str) -> str:
    """The typed file's data dictionary and record (its size and sha256, the normalized file's sha256): last."""
    return _in(version, "dictionary.json")
