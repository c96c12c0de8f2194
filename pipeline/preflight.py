"""Before the `luigi` command schedules anything: a configuration must have been found, the data folder must
be a folder (not a URL, which would become a folder named after its scheme), and a run log on PostgreSQL must
be reachable.

Luigi reads ./luigi.cfg (the current folder) or the files named by LUIGI_CONFIG_PATH. Started elsewhere
(cron starts in $HOME, Task Scheduler in System32) it finds none, falls back to a central scheduler on
localhost:8082 and to exit codes that hide failures. One line and exit code 2 say what to do instead.

A run log server that is down, refuses the password or has no such database would otherwise fail every task
of the run one by one: one line naming host:port/db and the cause, and exit code 3, before anything is done.
"""

import os
import sys
from pathlib import Path

import luigi.configuration

from pipeline.runlog import RunLog
from pipeline.runlog_engines import RunLogUnavailable, RunLogUrlError, SchemaTooNew, engine_for, url
from pipeline.settings import folder_problem

NO_CONFIG = 2
RUNLOG_UNAVAILABLE = 3


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


def data_dir_message(argv: list[str]) -> str | None:
    """--data-dir (or --HospitalsDaily-data-dir, --HospitalsPlan-data-dir) as Luigi will read it, else
    [HospitalsDaily] data_dir: refused if it is a URL."""
    names = ("--data-dir", "--HospitalsDaily-data-dir", "--HospitalsPlan-data-dir")
    value = luigi.configuration.get_config().get("HospitalsDaily", "data_dir", "")
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.split("=", 1)[0] in names and "=" in arg:
            value = arg.split("=", 1)[1]
    problem = folder_problem(value)
    return f"pipeline: {problem}" if problem else None


def runlog_url(argv: list[str]) -> str:
    """--runlog-url as Luigi will read it, else [runlog] url."""
    for i, arg in enumerate(argv):
        if arg == "--runlog-url" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--runlog-url="):
            return arg.split("=", 1)[1]
    return luigi.configuration.get_config().get("runlog", "url", "")


def runlog_message(argv: list[str]) -> str | None:
    try:
        if url.engine(target := runlog_url(argv)) != "postgresql":
            return None
        if "HospitalsPlan" in argv:  # the dry run writes nothing: it only reads, if there is anything to read
            with engine_for(target, Path("runlog.sqlite")).read_only():
                pass
        else:
            RunLog(Path("runlog.sqlite"), target)  # connects, and creates or migrates the schema
    except (RunLogUnavailable, RunLogUrlError, SchemaTooNew) as exc:
        return f"pipeline: {exc}"
    return None


def check(argv: list[str] = sys.argv) -> None:
    if not started_by_luigi_command(argv):
        return
    if message := missing_config_message(argv) or data_dir_message(argv):
        print(message, file=sys.stderr, flush=True)
        sys.exit(NO_CONFIG)
    if message := runlog_message(argv):
        print(message, file=sys.stderr, flush=True)
        sys.exit(RUNLOG_UNAVAILABLE)
