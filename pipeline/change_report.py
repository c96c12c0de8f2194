"""A version's change report, beside it: changes.csv (the changed cells) and then changes.json (the summary, with
the CSV's size and sha256 and the normalized file's sha256 it was made from), both through Storage. Knows the
version folders' files, not Luigi or the run log.

Which version a report compares with is recorded first, in the header map (`changes_against`: the previous
version's folder, or null), so a report lost to a crash is made again against the same version, whatever the
run log says by then. Every version finished since change reports exist gets a changes.json, so a listing of the
folder says whether it is there: one without an earlier version says so (`previous_version` null, no CSV)."""

import csv
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pipeline import layout
from pipeline.changes import compare
from pipeline.schema_drift import diff_columns
from pipeline.storage import Storage
from pipeline.version_check import stream_sha256

NO_PREVIOUS = "no earlier version"
NOT_KEPT = "earlier version no longer kept"


def write_change_report(
    store: Storage, folder: str, header_map: dict, key: list[str] | None
) -> tuple[dict | None, str | None]:
    """Makes the version's change report: (what changes.json holds, None), or (None, why it cannot be made)."""
    try:
        return make_change_report(store, folder, header_map, key), None
    except (OSError, ValueError, UnicodeError, csv.Error) as exc:
        store.remove(layout.changes_csv(folder))
        return None, f"change report: {exc}"


def make_change_report(store: Storage, folder: str, header_map: dict, key: list[str] | None) -> dict:
    """The report of `folder` (whose header map is `header_map`) against the version its `changes_against`
    names; returns what changes.json holds. Raises OSError, ValueError, UnicodeError or csv.Error when it cannot
    be made (the caller turns that into a NOTE); nothing is left that a version check would trust then."""
    against = header_map.get("changes_against")
    base = {"previous_version": against, "normalized_sha256": header_map["sha256"]}
    if against is None:
        return _write(store, folder, {**base, "summary": NO_PREVIOUS})
    previous = store.key(against)
    old_map, problem = store.read_json(layout.header_map(previous))
    if old_map is None and problem is None:  # deleted by retention: nothing to compare with, ever
        return _write(store, folder, {**base, "summary": NOT_KEPT})
    if old_map is None:
        raise ValueError(f"{store.location(layout.header_map(previous))} {problem}")
    drift = diff_columns(_columns(old_map), _columns(header_map)) or {}
    renamed = {r["from"]: r["to"] for r in drift.get("renamed", [])}
    result: list = []

    def write(temp: Path) -> None:
        with (
            store.local_copy(layout.normalized_csv(previous)) as old,
            store.local_copy(layout.normalized_csv(folder)) as new,
            open(temp, "w", encoding="utf-8", newline="") as out,
        ):
            result.append(compare(_opener(old), _opener(new), out, renamed, key))
        result.append(temp.stat().st_size)
        with open(temp, "rb") as written:
            result.append(stream_sha256(written))

    store.write_file(layout.changes_csv(folder), write)
    summary, size, sha256 = result
    report = {
        **base,
        **summary.to_json(),
        "columns": {kind: drift.get(kind, []) for kind in ("added", "removed", "renamed")},
        "cells_path": store.location(layout.changes_csv(folder)),
        "cells_bytes": size,
        "cells_sha256": sha256,
    }
    return _write(store, folder, report)


def _write(store: Storage, folder: str, report: dict) -> dict:
    store.write_json(layout.changes_json(folder), report)
    return report


def _columns(header_map: dict) -> list[str]:
    return [column["normalized"] for column in header_map["columns"]]


def _opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: path.open("rb")
