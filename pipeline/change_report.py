"""A version's change report, beside it: changes.csv (the changed cells) and then changes.json (the summary, with
the CSV's size and sha256), both through Storage. Knows the version folders' files, not Luigi or the run log."""

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pipeline import layout
from pipeline.changes import compare
from pipeline.storage import Storage


def make_change_report(store: Storage, folder: str, previous: str, drift: dict | None, key: list[str] | None) -> dict:
    """Compare `folder`'s normalized file with `previous` folder's; returns what changes.json holds. Raises
    OSError, ValueError or UnicodeError when it cannot be made (the caller turns that into a NOTE)."""
    renamed = {r["from"]: r["to"] for r in (drift or {}).get("renamed", [])}
    summary: list = []

    def write(temp: Path) -> None:
        with (
            store.local_copy(layout.normalized_csv(previous)) as old,
            store.local_copy(layout.normalized_csv(folder)) as new,
            open(temp, "w", encoding="utf-8", newline="") as out,
        ):
            summary.append(compare(_opener(old), _opener(new), out, renamed, key))
        summary.append(temp.stat().st_size)
        summary.append(_sha256(temp))

    store.write_file(layout.changes_csv(folder), write)
    result, size, sha256 = summary
    report = {
        "previous_version": store.location(previous),
        **result.to_json(),
        "columns": {kind: (drift or {}).get(kind, []) for kind in ("added", "removed", "renamed")},
        "cells_path": store.location(layout.changes_csv(folder)),
        "cells_bytes": size,
        "cells_sha256": sha256,
    }
    store.write_json(layout.changes_json(folder), report)
    return report


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: path.open("rb")
