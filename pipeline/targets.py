"""Writing Luigi targets atomically, and clearing what a killed writer left behind."""

import json
from contextlib import contextmanager
from pathlib import Path

import luigi


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


def remove_stale_temps(*targets: luigi.LocalTarget) -> None:
    """Temp files of a killed earlier attempt at these very targets."""
    for target in targets:
        path = Path(target.path)
        for stale in path.parent.glob(f"{path.name}-luigi-tmp-*"):
            stale.unlink(missing_ok=True)
