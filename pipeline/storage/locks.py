"""The folder locks of a data folder in object storage, which has none of its own: advisory locks in the run
log's PostgreSQL, which every machine of a shared run reaches, or, with a SQLite run log (one machine), lock
files in the local scratch folder."""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.runlog_engines import url as runlog_urls


def _digest(name: str) -> bytes:
    return hashlib.sha256(name.encode("utf-8")).digest()


class FileLocks:
    def __init__(self, folder: Path):
        self.folder = folder

    @contextmanager
    def hold(self, name: str, wait: bool = True) -> Iterator[bool]:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(self.folder / f"{_digest(name).hex()[:32]}.lock", timeout=-1 if wait else 0):
                yield True
        except Timeout:
            yield False


class AdvisoryLocks:
    def __init__(self, runlog_url: str):
        from pipeline.runlog_engines.postgres import PostgresEngine

        self.engine = PostgresEngine(runlog_url)

    @contextmanager
    def hold(self, name: str, wait: bool = True) -> Iterator[bool]:
        key = int.from_bytes(_digest(name)[:8], "big", signed=True)  # PostgreSQL's bigint lock key
        with self.engine.session_lock(key, wait) as held:
            yield held


def for_runlog(runlog_url: str, scratch: Path) -> FileLocks | AdvisoryLocks:
    if runlog_urls.engine(runlog_url) == "postgresql":
        return AdvisoryLocks(runlog_url)
    return FileLocks(scratch.parent / f"{scratch.name}-locks")  # kept: lock files are reused, run after run
