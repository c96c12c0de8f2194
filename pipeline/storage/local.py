"""The data folder on a local (or mounted) disk: files renamed into place by pipeline/durable.py's protocol,
OS file locks in each folder."""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

import luigi
import luigi.format
from filelock import FileLock, Timeout

from pipeline import durable
from pipeline.storage.base import Storage

LOCK_NAME = ".lock"
NORMALIZED_STAGED = "normalized.staged"  # pipeline/layout.py's name, repeated to keep this layer below it


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self._root = Path(root)
        self.root = str(self._root)

    def path(self, key: str) -> Path:
        return self._root / key

    def _native(self, key: str) -> str:
        """The key as a path string without pathlib's parsing: every version check lists and reads with it."""
        return os.path.join(self.root, *key.split("/"))

    def location(self, key: str) -> str:
        return str(self.path(key))

    def key(self, location: str) -> str:
        return Path(location).relative_to(self._root).as_posix()

    def target(self, key: str) -> luigi.Target:
        return luigi.LocalTarget(self.location(key), format=luigi.format.Nop)

    def sizes(self, folder: str, fresh: bool = False) -> dict[str, int]:
        try:
            with os.scandir(self._native(folder)) as entries:
                return {e.name: e.stat().st_size for e in entries if e.is_file() and e.name != LOCK_NAME}
        except (FileNotFoundError, NotADirectoryError):
            return {}

    def read_bytes(self, key: str) -> bytes | None:
        try:
            with open(self._native(key), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None

    def open_read(self, key: str):
        return open(self.path(key), "rb")

    def local_copy(self, key: str):
        return nullcontext(self.path(key))

    def workdir(self, folder: str):
        durable.make_folder(self.path(folder))
        return nullcontext(self.path(folder))

    def put_file(self, local: Path, key: str, read_only: bool = False) -> None:
        dest = self.path(key)
        if Path(local) == dest:  # written at its final name (the staged copy, vouched for by a later file)
            durable.sync_file(dest)
        else:
            durable.put_in_place(Path(local), dest, read_only)

    def move(self, source: str, dest: str, read_only: bool = False) -> None:
        durable.put_in_place(self.path(source), self.path(dest), read_only)

    def copy(self, source: str, dest: str, read_only: bool = False) -> None:
        with durable.atomic_path(self.path(dest), read_only) as temp:
            try:
                os.link(self.path(source), temp)  # no second copy of the bytes on disk
            except OSError:
                shutil.copyfile(self.path(source), temp)

    def remove(self, key: str) -> None:
        durable.remove(self.path(key))

    def remove_tree(self, folder: str) -> int:
        path = self.path(folder)
        if not path.exists():
            return 0
        size = sum(p.stat().st_size for p in path.glob("*") if p.is_file())
        with suppress(FileNotFoundError):
            durable.remove_tree(path)
        return size

    @contextmanager
    def lock(self, folder: str, wait: bool = True) -> Iterator[bool]:
        """An OS lock file in the folder: two overlapping runs (other run ids, other hosts on one share) take
        turns; the OS drops it if the holder dies, so temp files found on taking it are a dead writer's."""
        path = self.path(folder)
        durable.make_folder(path)
        try:
            with FileLock(path / LOCK_NAME, timeout=-1 if wait else 0):
                for stale in [*path.glob(f"*{durable.TEMP_MARK}*"), *path.glob("*.tmp")]:  # *.tmp: early releases
                    durable.remove(stale)
                yield True
        except Timeout:
            yield False

    def sweep(self) -> None:
        """Temp files in version folders nobody holds the lock of, and a staged normalized copy without its
        source.csv (a download cut short; the copy is only ever used beside it)."""
        for folder in map(Path, _leftovers(self._native("datasets"))):
            with self.lock(self.key(str(folder)), wait=False) as held:
                if held and not (folder / "source.csv").exists():
                    (folder / NORMALIZED_STAGED).unlink(missing_ok=True)

    def listing(self, folder: str) -> Iterator[tuple[str, int]]:
        for path in sorted(self.path(folder).rglob("*")):
            if path.is_file() and path.name != LOCK_NAME:
                yield self.key(str(path)), path.stat().st_size


def _leftovers(datasets: str) -> Iterator[str]:
    """The version folders (datasets/<id>/<version>) holding a temp file or a staged copy: one pass over the
    folders, which a no-op day's sweep spends most of its time listing."""
    for dataset in _folders(datasets):
        for version in _folders(dataset):
            with os.scandir(version) as entries:
                if any(durable.TEMP_MARK in entry.name or entry.name == NORMALIZED_STAGED for entry in entries):
                    yield version


def _folders(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [entry.path for entry in entries if entry.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
