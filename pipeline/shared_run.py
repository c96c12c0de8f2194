"""`python -m pipeline.shared_run [luigi options]`: the job of a run shared with assistants on luigid.

The `luigi` command's exit code and output say what its own worker did. When assistant workers on other
machines take part, one of them may run the run's last step and print its summary, and the command exits
10 or 25 for a run that succeeded. Luigi has no setting for "exit with the outcome of the run, whoever ran
it", so this wrapper runs the very same command (`luigi --module pipeline HospitalsDaily ...`) and then takes
the outcome from the run log, which every process writes: it prints the run's summary and exits 0 exactly
when the run succeeded, 30 when it failed (see docs/operations.md for every code).

It is also the one that tells the operator, with the job's settings: the /start ping before the run, the mail
and the final ping once the run is closed, whichever machine closed it (an assistant started before the
job's overlay gained [email] or [notify] would not). Before anything, the `luigi` command's start-up checks
(pipeline/preflight.py), with the same line and exit code.
"""

import json
import os
import sys
import time

import luigi.cmdline_parser
import luigi.retcodes

from pipeline import layout, notify, preflight
from pipeline.close_run import add_told
from pipeline.errors import RunClosed
from pipeline.report import COUNTS, summary_lines
from pipeline.runlog import RunLog
from pipeline.runlog_engines import RunLogUnavailable
from pipeline.settings import BY_WRAPPER_ENV, default_run_id
from pipeline.storage import Storage, StorageError

EXIT = {"succeeded": 0, "failed": 30}
ALREADY_RUNNING, NO_OUTCOME = 10, 30
SETTLE_SECONDS = 30.0  # a run whose last task just settled elsewhere may still be writing its report


def _with_run_id(argv: list[str]) -> tuple[list[str], str]:
    for i, arg in enumerate(argv):
        if arg == "--run-id" and i + 1 < len(argv):
            return argv, argv[i + 1]
        if arg.startswith("--run-id="):
            return argv, arg.split("=", 1)[1]
    run_id = default_run_id()
    return [*argv, "--run-id", run_id], run_id


def _open(args: list[str]) -> tuple[RunLog, Storage]:
    with luigi.cmdline_parser.CmdlineParser.global_instance(args) as parser:
        task = parser.get_task_obj()
        return task.runlog(), task.store


def _report(store: Storage, run) -> dict:
    """The closed run's report, or, where it could not be written, what the run log has of it."""
    report = store.read_json(layout.report(run["run_id"]))[0] if run["report_path"] else None
    return report or {
        "run_id": run["run_id"],
        "status": run["status"],
        "error": run["error"],
        "notes": json.loads(run["notes"] or "[]"),
        "counts": {name: run[name] or 0 for name in COUNTS},
        "datasets": [],
    }


def _refused(line: str, code: int) -> int:
    print(line, file=sys.stderr, flush=True)
    return code


def main(argv: list[str]) -> int:
    argv, run_id = _with_run_id(argv)
    args = ["--module", "pipeline", "HospitalsDaily", *argv]
    if found := preflight.problem(args):
        return _refused(found[1], found[0])
    os.environ[BY_WRAPPER_ENV] = "1"  # in the run's settings, which every task carries (pipeline/settings.py)
    try:
        log, store = _open(args)
    except RunLogUnavailable as exc:
        return _refused(f"pipeline: {exc}", preflight.RUNLOG_UNAVAILABLE)
    except StorageError as exc:
        return _refused(f"pipeline: {exc}", preflight.STORAGE_UNAVAILABLE)
    earlier = log.run(run_id)
    if earlier and earlier["status"] in ("running", "closing"):
        return _refused(
            f"run {run_id} is already running (started {earlier['started_at']}); a second copy does not join "
            "it: wait for it, or start a new run without --run-id",
            ALREADY_RUNNING,
        )
    if earlier and earlier["status"] in EXIT:  # told already, when it closed
        return _refused(f"ERROR: {RunClosed(run_id, earlier['status'], earlier['report_path'])}", NO_OUTCOME)
    notify.run_started()
    try:
        luigi.retcodes.run_with_retcodes(args)
        luigi_code = 0
    except SystemExit as exc:
        luigi_code = exc.code if isinstance(exc.code, int) else 1
    deadline = time.monotonic() + SETTLE_SECONDS
    while (run := log.run(run_id)) is not None and run["status"] not in EXIT and time.monotonic() < deadline:
        time.sleep(0.2)
    if run is None or run["status"] not in EXIT:
        status = run["status"] if run else "never started"
        print(f"run {run_id} did not finish ({status}); the luigi command exited {luigi_code}", file=sys.stderr)
        return luigi_code or NO_OUTCOME
    report = _report(store, run)
    add_told(log, run_id, report, notify.run_closed(report, run["report_path"]))
    if run["report_path"]:
        store.write_json(layout.report(run_id), report)
    print("\n".join(summary_lines(report, run["report_path"])), flush=True)
    return EXIT[run["status"]]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
