"""A version's typed files, beside it: normalized.parquet and then dictionary.json (the data dictionary, with the
Parquet file's size and sha256 and the normalized file's sha256 it was made from), both through Storage. Knows
the version folders' files, not Luigi or the run log; pipeline/typed_files.py does the typing.

Made only with `[analytics] parquet = true`; DuckDB is imported here, when a file is made, never on a day with
nothing to type."""

import threading
from pathlib import Path

from pipeline import layout
from pipeline.storage import Storage
from pipeline.version_check import stream_sha256

MISSING_EXTRA = (
    "[analytics] parquet = true needs DuckDB, which is not installed: install the job with its analytics extra "
    "(pip install -e '.[analytics]'), or set parquet = false"
)


def duckdb_missing() -> str | None:
    """Why the typed files cannot be made on this machine, or None."""
    try:
        import duckdb  # noqa: F401 - only whether it imports
    except ImportError:
        return MISSING_EXTRA
    return None


# The tasks run in threads of one process (pipeline/task_threads.py): one DuckDB conversion at a time keeps the
# job's memory to one conversion's (DuckDB's limit, 128 MB, and its 2 threads) whatever --workers says.
_ONE_AT_A_TIME = threading.Lock()


def write_typed(
    store: Storage, folder: str, header_map: dict, null_values: list[str]
) -> tuple[dict | None, str | None]:
    """Makes the version's typed files: (what dictionary.json holds, None), or (None, why they cannot be made)."""
    try:
        return make_typed(store, folder, header_map, null_values), None
    except (OSError, ValueError, ImportError) as exc:
        store.remove(layout.normalized_parquet(folder))
        return None, f"typed file: {exc}"


def make_typed(store: Storage, folder: str, header_map: dict, null_values: list[str]) -> dict:
    """normalized.parquet of `folder`'s normalized file (whose header map is `header_map`), then dictionary.json.
    Raises OSError, ValueError or ImportError when they cannot be made; nothing a version check would trust is
    left then."""
    from pipeline import typed_files  # DuckDB: imported only when a file is made

    columns = header_map["columns"]
    result: list = []

    def write(temp: Path) -> None:
        with store.local_copy(layout.normalized_csv(folder)) as csv_path:
            names = [c["normalized"] for c in columns]
            try:
                with _ONE_AT_A_TIME:
                    result.append(typed_files.write_parquet(csv_path, temp, names, null_values))
            except typed_files.duckdb.Error as exc:  # one line, as a NOTE
                raise ValueError(f"DuckDB: {str(exc).splitlines()[0]}") from exc
        result.append(temp.stat().st_size)
        with open(temp, "rb") as written:
            result.append(stream_sha256(written))

    store.write_file(layout.normalized_parquet(folder), write, read_only=True)
    typed, size, sha256 = result
    record = {
        "normalized_sha256": header_map["sha256"],
        "rows": header_map["rows"],
        "null_values": null_values,
        "parquet_path": store.location(layout.normalized_parquet(folder)),
        "parquet_bytes": size,
        "parquet_sha256": sha256,
        "columns": [
            {"position": c["position"], "column": c["normalized"], "original": c["original"], **t}
            for c, t in zip(columns, typed, strict=True)
        ],
    }
    store.write_json(layout.dictionary_json(folder), record)
    return record
