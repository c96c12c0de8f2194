"""What the tasks, latest/, closing a run, retention and the sweeps need of the data folder, whichever it is:
a local (or mounted) folder, or a prefix in S3-compatible object storage.

Every name is a key: a POSIX path relative to the data folder (`datasets/<id>/<version>/normalized.csv`).
`location(key)` is what reports, header maps and the run log show (an absolute path, or an s3:// URL).
Both implementations keep one promise: a key is either absent or whole. Files are made in a local work folder
and then put in place; what a killed writer leaves is found by `sweep` and by the version checks.
"""

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import luigi

from pipeline.durable import json_text, temp_path


class StorageError(OSError):
    """The data folder cannot be read or written: one line naming where (bucket and key, or path) and why."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "storage error"


def parent(key: str) -> str:
    return str(PurePosixPath(key).parent)


def join(*parts: str) -> str:
    return str(PurePosixPath(*parts))


class Storage(ABC):
    root: str  # the data folder as the user gave it, made absolute: /srv/data or s3://bucket/prefix
    # True where a key is visible only whole (object storage): present means finished. A local file renamed
    # into place before its data reached the disk can be cut short by a power cut, so there sizes are checked.
    whole_when_visible = False

    def check(self) -> None:  # noqa: B027 - a local folder has nothing to check before it is written
        """Raise StorageError, in one line, if the data folder cannot be reached at all (before a run starts)."""

    @abstractmethod
    def location(self, key: str) -> str:
        """The key as reports, header maps and the run log name it."""

    @abstractmethod
    def key(self, location: str) -> str:
        """The key of a location this storage gave."""

    @abstractmethod
    def target(self, key: str) -> luigi.Target:
        """Luigi's target for the key (LocalTarget, S3Target): what the tasks' output() return."""

    # -- reading ------------------------------------------------------------------------------------------

    @abstractmethod
    def sizes(self, folder: str, fresh: bool = False) -> dict[str, int]:
        """The files directly in a folder, name -> size (none: empty). Object storage may answer from the run's
        listing (`prefetch`); `fresh` asks the store itself."""

    def cached(self, folder: str) -> bool:
        """Whether `sizes(folder)` would answer from a listing made earlier in this process (object storage)."""
        return False

    def prefetch(self, folder: str, fresh: bool = False) -> None:  # noqa: B027 - a local folder is its own listing
        """One listing of everything under `folder` that later `sizes` calls in this process answer from (one
        made earlier in this run does, unless `fresh`)."""

    def size(self, key: str) -> int | None:
        return self.sizes(parent(key)).get(PurePosixPath(key).name)

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The key's bytes, None when there is none."""

    @abstractmethod
    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A stream of the key's bytes (hashing big files)."""

    @abstractmethod
    def local_copy(self, key: str) -> AbstractContextManager[Path]:
        """A local file holding the key's bytes while the context lasts (the file itself where it is local)."""

    def read_json(self, key: str) -> tuple[dict | None, str | None]:
        """A JSON object as a crash may have left it: (the object, None), (None, None) when there is none, or
        (None, why it cannot be used)."""
        try:
            raw = self.read_bytes(key)
            if raw is None:
                return None, None
            data = json.loads(raw)
        except (ValueError, OSError) as exc:  # JSONDecodeError, cut-off UTF-8, unreadable
            return None, f"does not parse ({exc})"
        if not isinstance(data, dict):
            return None, "does not parse (not a JSON object)"
        return data, None

    # -- writing ------------------------------------------------------------------------------------------

    @abstractmethod
    def workdir(self, folder: str) -> AbstractContextManager[Path]:
        """A local folder to make the files of `folder` in, before `put_file` puts them in place: the folder
        itself on disk, a scratch folder (removed when the context ends) for object storage."""

    @abstractmethod
    def put_file(self, local: Path, key: str, read_only: bool = False) -> None:
        """A finished local file (from `workdir`) becomes the key, whole and durable; the local name is gone."""

    def write_file(self, key: str, write: Callable[[Path], object], read_only: bool = False) -> None:
        """`write` makes a local file at the path it is given; it then becomes the key as `put_file` does."""
        with self.workdir(parent(key)) as work:
            temp = temp_path(work / PurePosixPath(key).name)
            try:
                write(temp)
                self.put_file(temp, key, read_only)
            finally:
                temp.unlink(missing_ok=True)

    def write_text(self, key: str, text: str) -> None:
        self.write_file(key, lambda path: path.write_text(text, encoding="utf-8", newline=""))

    def write_json(self, key: str, data) -> None:
        self.write_text(key, json_text(data))

    def put_files(self, files: list[tuple[Path, str]]) -> None:
        """Several finished local files, each as `put_file`: in this order on disk, where each file vouches for
        the ones before it (a rename is durable only in order); at once in object storage, where each key is
        whole or absent whatever the order."""
        for local, key in files:
            self.put_file(local, key)

    def staged(self, key: str) -> str:
        """Where a file written while its input arrives waits until a later file vouches for it: beside its final
        name on disk, `<stem>.staged`, since a rename into place is what makes it durable and read-only; under
        its final key itself in object storage, where a key is whole or absent (so the bytes are not copied
        again on the server), and where the version's header map, written last, is what says it is finished."""
        path = PurePosixPath(key)
        return str(path.with_name(f"{path.stem}.staged"))

    @abstractmethod
    def move(self, source: str, dest: str, read_only: bool = False) -> None:
        """Rename within the data folder (a server-side copy, then a delete, in object storage)."""

    @abstractmethod
    def copy(self, source: str, dest: str, read_only: bool = False) -> None:
        """`dest` gets `source`'s bytes, atomically: a hard link or copy on disk, a server-side copy in S3."""

    @abstractmethod
    def remove(self, key: str) -> None:
        """Delete the key if it is there."""

    @abstractmethod
    def remove_tree(self, folder: str) -> int:
        """Delete a folder and everything in it; returns the bytes freed."""

    # -- concurrency and leftovers ------------------------------------------------------------------------

    @abstractmethod
    def lock(self, folder: str, wait: bool = True) -> AbstractContextManager[bool]:
        """Held while the files of a folder are written, by every process on every machine that writes them;
        released if the holder dies. With wait=False, yields False at once when another holder has it."""

    @abstractmethod
    def sweep(self) -> None:
        """Delete what killed writers left that nobody holds the lock of (called as a run starts)."""

    def listing(self, folder: str) -> Iterator[tuple[str, int]]:
        """Every key under a folder with its size (a few listing requests in object storage)."""
        raise NotImplementedError
