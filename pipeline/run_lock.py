"""One daily run per data folder on a machine, held by an OS file lock for as long as the luigi command lives.

It replaces Luigi's pid lock (`[core] no_lock = true` in luigi.cfg), which compares command lines of the pids in
a pid file: on Windows it asks `wmic` for them, which Windows 11 24H2 no longer has, and then any later command
whose pid matched a stale pid in the file was refused as "already running" (pids are reused on Windows). An
OS lock cannot be faked by a stale file: the OS drops it when the command ends, however it ends (on Linux, once
the task processes it forked have ended too). It is keyed by the data folder, not the command line, so two
differently worded commands on one folder are one run too. It lives where Luigi kept its pid files
(`[core] lock_pid_dir`), so two hosts (two lock folders) may still run on one shared folder at the same time:
the version folders' own locks make them take turns (docs/operations.md). A run given its own `--run-id` is
another run on purpose: its lock is its own.
"""

import hashlib
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

_held: list[FileLock] = []  # kept until the process ends, when the OS releases it


def default_folder() -> str:
    return str(Path(tempfile.gettempdir()) / "luigi")  # Luigi's own default lock_pid_dir


def lock_path(folder: str | Path, data_dir: str, run_id: str = "") -> Path:
    digest = hashlib.sha256(f"{data_dir}\n{run_id}".encode()).hexdigest()[:16]
    return Path(folder) / f"cms-hospitals-{digest}.lock"


def take(folder: str | Path, data_dir: str, run_id: str = "") -> Path | None:
    """Hold the data folder's run lock until this process ends; None if it is taken, else the lock's path."""
    path = lock_path(folder, data_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return None
    _held.append(lock)
    return path
