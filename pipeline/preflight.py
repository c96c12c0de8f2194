"""Before the `luigi` command schedules anything: a configuration must have been found.

Luigi reads ./luigi.cfg (the current folder) or the files named by LUIGI_CONFIG_PATH. Started elsewhere
(cron starts in $HOME, Task Scheduler in System32) it finds none, falls back to a central scheduler on
localhost:8082 and to exit codes that hide failures. One line and exit code 2 say what to do instead.
"""

import os
import sys
from pathlib import Path

import luigi.configuration

NO_CONFIG = 2


def started_by_luigi_command(argv: list[str]) -> bool:
    return Path(argv[0]).stem.lower() in ("luigi", "luigi-script") and any(
        task in argv for task in ("HospitalsDaily", "HospitalsPlan")
    )


def missing_config_message(argv: list[str]) -> str | None:
    config = luigi.configuration.get_config()
    if config.has_option("HospitalsDaily", "metastore_url"):  # the shipped luigi.cfg (or an overlay) was read
        return None
    named = os.environ.get("LUIGI_CONFIG_PATH")
    looked = f"{Path.cwd() / 'luigi.cfg'}" + (f" and LUIGI_CONFIG_PATH={named}" if named else "")
    return (
        f"pipeline: no luigi.cfg with [HospitalsDaily] metastore_url was found (looked in {looked}); "
        "run the command from the project folder (cd /path/to/project) or set LUIGI_CONFIG_PATH to its luigi.cfg"
    )


def check(argv: list[str] = sys.argv) -> None:
    if started_by_luigi_command(argv) and (message := missing_config_message(argv)):
        print(message, file=sys.stderr, flush=True)
        sys.exit(NO_CONFIG)
