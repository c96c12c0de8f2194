"""Writing Luigi targets atomically, and clearing what a killed writer left behind."""

import json
from contextlib import contextmanager
from pathlib import Path

import luigi
from filelock import FileLock, Timeout

from pipeline import layout

LOCK_NAME = ".lock"


@contextmanager
def folder_lock(folder: Path):
    """An OS lock on a version folder, held while its files are written. Two overlapping runs (other run ids,
    other hosts) then take turns instead of writing the same files; the OS drops it if the holder dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / LOCK_NAME):
        yield


def sweep_stale_temps(datasets: Path) -> None:
    """Delete what killed writers left in version folders nobody holds the lock of: temp files, and a staged
    normalized copy without its source.csv (a download cut short; the copy is only ever used beside it)."""
    temps = {temp.parent for temp in datasets.glob("*/*/*-luigi-tmp-*")}
    staged = {copy.parent for copy in datasets.glob(f"*/*/{layout.NORMALIZED_STAGED}")}
    for folder in temps | staged:
        try:
            with FileLock(folder / LOCK_NAME, timeout=0):
                for temp in folder.glob("*-luigi-tmp-*"):
                    temp.unlink(missing_ok=True)
                if not layout.source_csv(folder).exists():
                    layout.normalized_staged(folder).unlink(missing_ok=True)
        except Timeout:
            continue  # a live writer


@contextmanager
def atomic_path(target: luigi.LocalTarget):
    """Luigi's temporary_path (same folder, then rename), minus the temp file when the body fails."""
    temp = None
    try:
        with target.temporary_path() as temp:
            yield Path(temp)
    except BaseException:
        if temp:
            Path(temp).unlink(missing_ok=True)
        raise


def write_json(target: luigi.LocalTarget, data) -> None:
    with atomic_path(target) as temp:
        temp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8", newline="")


def write_json_file(path: Path, data) -> None:
    write_json(luigi.LocalTarget(str(path)), data)


def remove_stale_temps(*targets: luigi.LocalTarget) -> None:
    """Temp files of a killed earlier attempt at these very targets (call it holding the folder lock)."""
    for target in targets:
        path = Path(target.path)
        for stale in path.parent.glob(f"{path.name}-luigi-tmp-*"):
            stale.unlink(missing_ok=True)
