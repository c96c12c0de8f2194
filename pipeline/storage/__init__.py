"""The data folder: a local folder (pipeline/storage/local.py) or a prefix in S3-compatible object storage
(pipeline/storage/s3.py), chosen by how `data_dir` is written. Everything else speaks to `Storage`
(pipeline/storage/base.py) and never asks which one it has."""

import os
import re
import tempfile
import threading
from pathlib import Path

from pipeline.storage.base import Storage, StorageError, join, parent
from pipeline.storage.local import LocalStorage

__all__ = [
    "Storage",
    "StorageError",
    "data_dir_problem",
    "join",
    "normalized_data_dir",
    "open_storage",
    "parent",
    "sweep_scratch",
]

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: C:\\data is a Windows folder
_OPEN: dict[tuple, Storage] = {}
_OPENING = threading.Lock()


def scheme(data_dir: str) -> str | None:
    match = _URL.match(data_dir or "")
    return match[1].lower() if match else None


def data_dir_problem(data_dir: str, runlog_url: str = "", check_runlog: bool = True) -> str | None:
    """Why `data_dir` cannot be used, in one line: a URL scheme other than s3:// (it would otherwise become a
    folder named after its scheme), an s3:// URL without a bucket, or object storage without a run log."""
    kind = scheme(data_dir)
    if kind is None:
        return None
    if kind != "s3":
        return (
            f"data_dir {data_dir} is a URL ({kind}://) the job cannot write to: give a local (or mounted) folder "
            "path, or s3://bucket/prefix for S3-compatible object storage"
        )
    if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?", data_dir):
        return f"data_dir {data_dir} does not name a bucket: write it as s3://bucket/prefix"
    if check_runlog and not runlog_url:
        return (
            f"data_dir {data_dir} is in object storage, where the run log cannot live: give it with --runlog-url "
            "(or [runlog] url): postgresql://... for several machines, sqlite:///path/runlog.sqlite for one"
        )
    return None


def normalized_data_dir(data_dir: str) -> str:
    """A local folder made absolute (the paths in the run log and reports then mean the same from wherever
    they are read); an s3:// URL without its trailing slash."""
    if scheme(data_dir):
        return data_dir.rstrip("/")
    return os.path.abspath(data_dir) if data_dir else data_dir


def sweep_scratch(scratch_dir: str) -> None:
    """What writers killed on this machine left in its scratch folder for object storage. A run's sweep does it
    where the run starts; an assistant, which starts none, does it as it starts."""
    from pipeline.storage import s3  # boto3 is not needed for this

    s3.sweep_scratch(Path(scratch_dir or tempfile.gettempdir()) / s3.SCRATCH)


def open_storage(data_dir: str, runlog_url: str = "", scratch_dir: str = "") -> Storage:
    """One Storage per data folder and process (a client and its listing are reused by every task there, and
    the tasks run in threads of one process: pipeline/task_threads.py)."""
    key = (data_dir, runlog_url, scratch_dir, os.getpid())
    if (store := _OPEN.get(key)) is not None:
        return store
    with _OPENING:
        if (store := _OPEN.get(key)) is not None:
            return store
        if problem := data_dir_problem(data_dir, runlog_url):
            raise StorageError(problem)
        if scheme(data_dir) == "s3":
            from pipeline.storage.s3 import S3Storage  # boto3 is the optional `s3` extra

            store = S3Storage(data_dir, Path(scratch_dir or tempfile.gettempdir()), runlog_url)
        else:
            store = LocalStorage(data_dir)
        _OPEN[key] = store
    return store
