"""Durable atomic writes: every file the job keeps reaches its final name whole, and stays whole through a
power cut. Every writer goes through `atomic_path` or `put_in_place` (pipeline/storage/local.py, the data
folder on disk, is the one caller); nothing else renames a file into place.

A rename is not a write barrier: on ext4 and XFS (delayed allocation) a power cut after an `os.replace`
without `fsync` can leave the final name zero-length. So the order is: write a temp file beside the final name,
fsync it, rename it into place, fsync the folder so the rename itself is on disk. On Windows `os.fsync` flushes
the file; a folder cannot be opened to sync, and NTFS journals the rename.
"""

import json
import os
import random
import shutil
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pipeline import windows_links

TEMP_MARK = "-luigi-tmp-"  # Luigi's own temp-file infix, so one sweep finds every writer's leftovers
NO_SYNC_ENV = "CMS_PIPELINE_NO_FSYNC"  # benchmarks only: measures what the syncs cost; never set it in production
_WINDOWS = os.name == "nt"
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


def _syncing() -> bool:
    return not os.environ.get(NO_SYNC_ENV)


def sync_file(path: Path) -> None:
    """Flush a file's data to the disk, whichever handle wrote it (fsync works on the file, not the handle)."""
    if not _syncing():
        return
    try:
        # Windows' FlushFileBuffers needs a handle that may write; POSIX syncs through any handle.
        fd = os.open(path, (os.O_RDWR | os.O_BINARY) if _WINDOWS else os.O_RDONLY)  # type: ignore[attr-defined]
    except PermissionError:
        if _WINDOWS:  # read-only already: a hard link to a file that was synced when it was written
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """Make the names in a folder (a rename, a new file or folder) durable; not possible, nor needed, on Windows."""
    if _WINDOWS or not _syncing():
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folder(folder: Path) -> None:
    """mkdir -p, with each new folder's name made durable in its parent."""
    folder = Path(folder)
    if folder.is_dir():
        return
    make_folder(folder.parent)
    try:
        folder.mkdir()
    except FileExistsError:
        return  # made by a concurrent writer, who syncs it
    sync_folder(folder.parent)


def temp_path(dest: Path) -> Path:
    return dest.with_name(f"{dest.name}{TEMP_MARK}{random.randrange(10**9):09d}")


def set_read_only(path: Path) -> None:
    os.chmod(path, READ_ONLY)


def put_in_place(temp: Path, dest: Path, read_only: bool = False) -> None:
    """The last steps of the protocol for a temp file that is written and closed: sync, rename, sync the folder.
    `read_only` protects the file (and its hard links in latest/) from writes in place."""
    sync_file(temp)
    if read_only:
        set_read_only(temp)
    if _WINDOWS and dest.exists() and not os.access(dest, os.W_OK):
        # Windows refuses to replace a read-only file, and clearing the attribute would clear it under every hard
        # link (the archived version behind a latest/ file). So the old name moves aside (a file held open, as
        # Excel holds it, refuses: nothing changes), the new file takes its place, and the old name alone goes.
        aside = temp_path(dest)
        os.replace(dest, aside)
        try:
            os.replace(temp, dest)
        except OSError:
            os.replace(aside, dest)
            raise
        windows_links.delete_name(aside)
    else:
        os.replace(temp, dest)
    # POSIX rename does nothing when both names are hard links to one file (latest/ re-linking its own file).
    temp.unlink(missing_ok=True)
    sync_folder(dest.parent)


@contextmanager
def atomic_path(dest: Path, read_only: bool = False) -> Iterator[Path]:
    """A temp path beside `dest` to write and close; on success it becomes `dest` durably, on failure it is gone."""
    dest = Path(dest)
    make_folder(dest.parent)
    temp = temp_path(dest)
    try:
        yield temp
        put_in_place(temp, dest, read_only)
    except BaseException:
        remove(temp)
        raise


def json_text(data) -> str:
    """How every JSON file of the job is written (the run log keeps some texts to rebuild them exactly)."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def remove(path: Path) -> None:
    """Delete a file if it is there, read-only or not (Windows refuses to delete a read-only file); its other
    hard links keep their protection."""
    try:
        Path(path).unlink(missing_ok=True)
    except PermissionError:
        if not _WINDOWS:
            raise
        with suppress(FileNotFoundError):
            windows_links.delete_name(Path(path))


def remove_tree(folder: Path) -> None:
    """shutil.rmtree that also deletes read-only files on Windows."""

    def writable_and_again(function, path, error) -> None:
        exc = error[1] if isinstance(error, tuple) else error
        if not (_WINDOWS and isinstance(exc, PermissionError) and function in (os.unlink, os.remove)):
            raise exc
        windows_links.delete_name(Path(path))

    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=writable_and_again)
    else:
        shutil.rmtree(folder, onerror=writable_and_again)
