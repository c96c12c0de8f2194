"""A keep-alive worker that is not an assistant leaves once every run it scheduled is closed.

The workers of a shared run keep alive (`[worker] keep_alive`, docs/operations.md "Several machines"): a job's
worker must wait while another machine holds a task or a download slot it needs. Luigi keeps such a worker
while luigid counts one of its tasks as pending, and luigid counts a FAILED task too (it may be retried after
`[scheduler] retry_delay`), and a wrapper whose dependency failed. A run with a failure, or whose catalog
failed, would keep its job until the keep-alive limit. The run log knows better: a run that succeeded or failed
is closed, whoever closed it, and nothing of it will run again, so its job's worker leaves at its next poll.
So does a worker whose every pending task is FAILED or waits on one: a version lost with a killed assistant
is failed by luigid without the run log knowing, and its run cannot close; the next run does that version.
"""

import logging

import luigi
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


def blocked_by_failures(scheduler, mine: set[str], response) -> bool:
    """Whether everything luigid counts as pending for this worker is a FAILED task or waits on one (luigid
    offers a FAILED task again only after its retry_delay, 15 minutes), with nothing of it running anywhere. A
    task waiting for a download slot that another run holds is PENDING without a failure upstream: not this."""
    if response.running_tasks or not response.n_pending_tasks:
        return False
    failed = scheduler.task_list(status="FAILED", upstream_status="", limit=False)
    waiting = scheduler.task_list(status="PENDING", upstream_status="UPSTREAM_FAILED", limit=False)
    return len((set(failed) | set(waiting)) & mine) >= response.n_pending_tasks


def _keep_alive(worker: luigi.worker.Worker, get_work_response) -> bool:
    if not (luigis := _luigis_keep_alive(worker, get_work_response)) or worker._assistant:
        return luigis
    logs = worker.__dict__.setdefault("_pipeline_run_logs", {})
    try:
        if not runs_open(logs, list(worker._scheduled_tasks.values())):
            return False
        return not blocked_by_failures(worker._scheduler, set(worker._scheduled_tasks), get_work_response)
    except Exception as exc:  # the run log or luigid unreachable for a moment: Luigi's own answer
        logger.debug("keep-alive: cannot tell whether the run is over (%s); keeping alive", exc)
        return True


SUPPORTED_VERSION = "3.8.1"  # _keep_alive calls Luigi's own, and reads the worker's _scheduled_tasks and _assistant


def install() -> bool:
    """Only on the Luigi release this code reads the worker of (pinned); any other keeps Luigi's own rule."""
    if luigi.__version__ != SUPPORTED_VERSION:
        logger.debug("keep-alive: luigi %s is not %s; Luigi's own rule", luigi.__version__, SUPPORTED_VERSION)
        return False
    luigi.worker.Worker._keep_alive = _keep_alive  # type: ignore[method-assign]
    return True
