"""A keep-alive worker that is not an assistant leaves once every run it scheduled is closed.

The workers of a shared run keep alive (`[worker] keep_alive`, docs/operations.md "Several machines"): a job's
worker must wait while another machine holds a task or a download slot it needs. Luigi keeps such a worker
while luigid counts one of its tasks as pending, and luigid counts a FAILED task too (it may be retried after
`[scheduler] retry_delay`), and a wrapper whose dependency failed. A run with a failure, or whose catalog
failed, would keep its job until the keep-alive limit. The run log knows better: a run that succeeded or failed
is closed, whoever closed it, and nothing of it will run again, so its job's worker leaves at its next poll.
"""

import logging

import luigi.worker

from pipeline.runlog import RunLog
from pipeline.tasks import RunTask

logger = logging.getLogger("luigi-interface")
CLOSED = ("succeeded", "failed")
_luigis_keep_alive = luigi.worker.Worker._keep_alive


def runs_open(logs: dict[tuple[str, str], RunLog], tasks) -> bool:
    """Whether any run of `tasks` is not closed yet (one not started counts as open); True without runs.
    `logs` caches a RunLog per (data_dir, runlog_url), so a poll is one query per run."""
    runs = {(task.data_dir, task.runlog_url, task.run_id): task for task in tasks if isinstance(task, RunTask)}
    if not runs:
        return True
    for (data_dir, runlog_url, run_id), task in runs.items():
        log = logs.get((data_dir, runlog_url))
        if log is None:
            log = logs[(data_dir, runlog_url)] = task.runlog()
        row = log.run(run_id)
        if row is None or row["status"] not in CLOSED:
            return True
    return False


def _keep_alive(worker: luigi.worker.Worker, get_work_response) -> bool:
    if not (luigis := _luigis_keep_alive(worker, get_work_response)) or worker._assistant:
        return luigis
    logs = worker.__dict__.setdefault("_pipeline_run_logs", {})
    try:
        return runs_open(logs, list(worker._scheduled_tasks.values()))
    except Exception as exc:  # the run log unreachable for a moment: Luigi's own answer, as before this patch
        logger.debug("keep-alive: cannot read the run log (%s); keeping alive", exc)
        return True


def install() -> None:
    luigi.worker.Worker._keep_alive = _keep_alive  # type: ignore[method-assign]
