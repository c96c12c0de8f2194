"""The version-folder lock, and clearing what a killed writer left behind."""

from contextlib import contextmanager
from pathlib import Path

import luigi
from filelock import FileLock, Timeout

from pipeline import layout
from pipeline.durable import TEMP_MARK, make_folder, remove

LOCK_NAME = ".lock"


@contextmanager
def folder_lock(folder: Path):
    """An OS lock on a version folder, held while its files are written. Two overlapping runs (other run ids,
    other hosts) then take turns instead of writing the same files; the OS drops it if the holder dies."""
    make_folder(folder)
    with FileLock(folder / LOCK_NAME):
        yield


def sweep_stale_temps(datasets: Path) -> None:
    """Delete what killed writers left in version folders nobody holds the lock of: temp files, and a staged
    normalized copy without its source.csv (a download cut short; the copy is only ever used beside it)."""
    temps = {temp.parent for temp in datasets.glob(f"*/*/*{TEMP_MARK}*")}
    staged = {copy.parent for copy in datasets.glob(f"*/*/{layout.NORMALIZED_STAGED}")}
    for folder in temps | staged:
        try:
            with FileLock(folder / LOCK_NAME, timeout=0):
                for temp in folder.glob(f"*{TEMP_MARK}*"):
                    remove(temp)
                if not layout.source_csv(folder).exists():
                    layout.normalized_staged(folder).unlink(missing_ok=True)
        except Timeout:
            continue  # a live writer


def remove_stale_temps(*targets: luigi.LocalTarget) -> None:
    """Temp files of a killed earlier attempt at these very targets (call it holding the folder lock)."""
    for target in targets:
        path = Path(target.path)
        for stale in path.parent.glob(f"{path.name}{TEMP_MARK}*"):
            remove(stale)
