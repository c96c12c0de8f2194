"""LUIGI_CONFIG_PATH must name a file. Luigi only warns when it does not, and runs on its defaults (a local data
folder, SQLite, data.cms.gov): a typo in a cron line or a systemd unit would write a second, silent data set.
The `luigi` command (pipeline/preflight.py), pipeline.shared_run and pipeline.assistant refuse it in one line
instead, before anything is done. No Luigi here: imported first (python -m pipeline.*), this module keeps
Luigi's own warning from coming before that line.
"""

import os
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", "Config file does not exist: ", UserWarning)


def problem() -> str | None:
    """The line refusing LUIGI_CONFIG_PATH, when it is set to something that is not a file."""
    named = os.environ.get("LUIGI_CONFIG_PATH")
    if named is None or Path(named).is_file():
        return None
    return (
        f"pipeline: LUIGI_CONFIG_PATH={named} names no file (looked from {Path.cwd()}); nothing was done: "
        "correct the path, or unset LUIGI_CONFIG_PATH to run on luigi.cfg alone"
    )
