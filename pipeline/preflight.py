"""Before the `luigi` command schedules anything: a configuration must have been found, the data folder must
be a folder or an s3:// URL (any other URL would become a folder named after its scheme; object storage needs a
run log given), typed files asked for need DuckDB installed (the `analytics` extra), a run log on PostgreSQL
must be reachable, and so must a bucket.

Luigi reads ./luigi.cfg (the current folder) or the files named by LUIGI_CONFIG_PATH. Started elsewhere
(cron starts in $HOME, Task Scheduler in System32) it finds none, falls back to a central scheduler on
localhost:8082 and to exit codes that hide failures. One line and exit code 2 say what to do instead; so for a
LUIGI_CONFIG_PATH that names no file (pipeline/config_path.py).

A run log server that is down, refuses the password or has no such database would otherwise fail every task
of the run one by one: one line naming host:port/db and the cause, and exit code 3, before anything is done.
So would a bucket that is missing, refuses the credentials or whose endpoint is down: one line naming the
bucket and the cause, and exit code 4.

A relative data_dir in a config file means the folder beside that file, wherever the command starts (Task
Scheduler starts in System32: with LUIGI_CONFIG_PATH set, `data_dir = data` became C:\\Windows\\System32\\data).
Last, a daily run takes its data folder's run lock (pipeline/run_lock.py), or exits 10.
"""

import configparser
import os
import sys
from pathlib import Path

import luigi.configuration

from pipeline import config_path, processes, run_lock, typed_version
from pipeline.runlog import RunLog
from pipeline.runlog_engines import RunLogUnavailable, RunLogUrlError, SchemaTooNew, engine_for, url
from pipeline.storage import StorageError, data_dir_problem, normalized_data_dir, open_storage

NO_CONFIG = 2
RUNLOG_UNAVAILABLE = 3
STORAGE_UNAVAILABLE = 4
ALREADY_RUNNING = 10  # [retcode] already_running
DATA_DIR_NAMES = ("--data-dir", "--HospitalsDaily-data-dir", "--HospitalsPlan-data-dir")


def started_by_luigi_command(argv: list[str]) -> bool:
    """`luigi ...` (luigi.exe, luigi-script.py) or `python -m luigi ...` (argv[0] is luigi/__main__.py)."""
    program = Path(argv[0])
    by_name = program.stem.lower() in ("luigi", "luigi-script")
    as_module = program.name == "__main__.py" and program.parent.name == "luigi"
    return (by_name or as_module) and any(task in argv for task in ("HospitalsDaily", "HospitalsPlan"))


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


def _option(argv: list[str], names: tuple[str, ...], default: str) -> str:
    """An option as Luigi will read it from the command line, else `default`."""
    value = default
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.split("=", 1)[0] in names and "=" in arg:
            value = arg.split("=", 1)[1]
    return value


def data_dir(argv: list[str]) -> str:
    """--data-dir (or --HospitalsDaily-data-dir, --HospitalsPlan-data-dir), else [HospitalsDaily] data_dir."""
    return _option(argv, DATA_DIR_NAMES, luigi.configuration.get_config().get("HospitalsDaily", "data_dir", "data"))


def file_setting(section: str, option: str) -> Path | None:
    """The config file whose value Luigi uses for section/option: the last one read that sets it."""
    config = luigi.configuration.get_config()
    found = None
    for name in getattr(type(config), "_config_paths", []):
        parser = configparser.RawConfigParser()
        try:
            parser.read(name, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue  # Luigi itself reports a file it cannot read
        if parser.has_option(section, option):
            found = Path(name).absolute()
    return found


def anchor_data_dir(argv: list[str]) -> None:
    """A relative data_dir from a config file is relative to that file's folder, not to where the command
    started; one given on the command line stays relative to the current folder, as any path argument."""
    config = luigi.configuration.get_config()
    value = config.get("HospitalsDaily", "data_dir", "")
    if _option(argv, DATA_DIR_NAMES, "") or not value or "://" in value or Path(value).is_absolute():
        return
    if (source := file_setting("HospitalsDaily", "data_dir")) is not None:
        config.set("HospitalsDaily", "data_dir", str(source.parent / value))


def run_lock_message(argv: list[str]) -> str | None:
    """Take the data folder's run lock for a daily run (the dry run writes nothing, so it needs none)."""
    if "HospitalsDaily" not in argv:
        return None
    folder = _option(argv, ("--lock-pid-dir",), luigi.configuration.get_config().get("core", "lock_pid_dir", ""))
    folder = folder or run_lock.default_folder()
    target = normalized_data_dir(data_dir(argv))
    run_id = _option(argv, ("--run-id", "--HospitalsDaily-run-id"), "")
    if run_lock.take(folder, target, run_id) is None:
        lock = run_lock.lock_path(folder, target, run_id)
        run = f"run {run_id}" if run_id else "a run"
        return f"pipeline: {run} on {target} is already running on this machine (it holds {lock}); nothing was done"
    return None


def data_dir_message(argv: list[str]) -> str | None:
    """A URL other than s3://, or object storage without a run log."""
    problem = data_dir_problem(data_dir(argv), runlog_url(argv))
    return f"pipeline: {problem}" if problem else None


def storage_message(argv: list[str]) -> str | None:
    """The bucket, if the data folder is one: it exists and the credentials may use it."""
    scratch = _option(
        argv, ("--storage-scratch-dir",), luigi.configuration.get_config().get("storage", "scratch_dir", "")
    )
    try:
        open_storage(normalized_data_dir(data_dir(argv)), runlog_url(argv), scratch).check()
    except StorageError as exc:
        return f"pipeline: {exc}"
    return None


def runlog_url(argv: list[str]) -> str:
    """--runlog-url as Luigi will read it, else [runlog] url."""
    return _option(argv, ("--runlog-url",), luigi.configuration.get_config().get("runlog", "url", ""))


def analytics_message(argv: list[str]) -> str | None:
    """`[analytics] parquet = true` (or --analytics-parquet) without DuckDB: the extra to install, before any run."""
    on = "--analytics-parquet" in argv or luigi.configuration.get_config().getboolean("analytics", "parquet", False)
    return f"pipeline: {problem}" if on and (problem := typed_version.duckdb_missing()) else None


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


def problem(argv: list[str]) -> tuple[int, str] | None:
    """The first start-up check that fails, as (exit code, line); also for pipeline/shared_run.py. A relative
    data_dir from a config file is made absolute first, beside that file."""
    anchor_data_dir(argv)
    if message := (
        config_path.problem() or missing_config_message(argv) or data_dir_message(argv) or analytics_message(argv)
    ):
        return NO_CONFIG, message
    if message := runlog_message(argv):
        return RUNLOG_UNAVAILABLE, message
    if message := storage_message(argv):
        return STORAGE_UNAVAILABLE, message
    return None


def check(argv: list[str] = sys.argv) -> None:
    # A spawned task process (Windows) imports the pipeline again with the command's argv: the checks, and the
    # run lock its parent holds, are the command's alone.
    if not started_by_luigi_command(argv) or processes.task_process():
        return
    if found := problem(argv):
        print(found[1], file=sys.stderr, flush=True)
        sys.exit(found[0])
    if message := run_lock_message(argv):
        print(message, file=sys.stderr, flush=True)
        sys.exit(ALREADY_RUNNING)
