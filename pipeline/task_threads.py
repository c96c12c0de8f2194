"""The job's tasks run in threads of the `luigi` process, not in a process each.

Why
---
Luigi 3.8.1 runs every task of a worker with `--workers` above 1 in a process of its own: a fork on Linux, a fresh
interpreter on Windows (spawn), which imports the pipeline again (about 450 modules) and reads luigi.cfg again.
Our tasks wait on the network and the disk; the process was the cost: each one opened its own run-log
connection, boto3 client and bucket listing, and on Windows paid an interpreter start per task. Luigi has no
thread option, so this module gives it one where Luigi decides how a task is run, and nowhere else: Luigi still
schedules every task (the task graph, luigid and its UI, resources, assistants, retries) and runs it through its
own `TaskProcess.run`, with the same events, result queue and status reporter.

How
---
* `ThreadWorker._create_task_process` returns a `TaskThread` for the job's tasks (`RunTask`): Luigi's
  `ContextManagedTaskProcess` whose `start()` starts a thread instead of a process. Other tasks, and ours when a
  worker timeout is set (`[worker] timeout` or a task's `worker_timeout`: only a process can be stopped from
  outside), keep Luigi's process.
* `LockedScheduler` serializes every call into Luigi's in-process scheduler, which is not thread-safe: the
  worker's loop, its keep-alive thread and the task threads' status reports share it.
* Luigi's check of a task's requirements, just before it runs the task, asks each one `complete_afresh()`
  (pipeline/tasks.py): the tasks share the run's bucket listing, which cannot show what an assistant on another
  machine made since.
* What the tasks share is made for threads where they share it: one Storage (one boto3 client, one listing) per
  data folder and process (pipeline/storage/__init__.py, s3.py), a pool of run-log connections on PostgreSQL
  (pipeline/runlog_engines/postgres.py; SQLite opens one per operation), whole progress lines (pipeline/report.py).
* A task must leave the process as it found it: the current folder and the environment are compared after each
  task and put back, with a warning naming the task (a thread cannot set signal handlers at all).

Luigi's own worker is made by `luigi.interface._WorkerSchedulerFactory.create_worker`, which the `luigi` command
and `luigi.build` use; `apply()` replaces it when `luigi.__version__` is the one this code mirrors (3.8.1, pinned)
and unless `PIPELINE_TASK_THREADS=0` is set (a process per task again, as Luigi has it: for measuring one mode
against the other, docs/benchmark.md). pipeline/__init__.py applies it on import.
"""

import functools
import logging
import os
import threading

import luigi
import luigi.interface
import luigi.scheduler
import luigi.worker

from pipeline.runlog_engines import postgres

logger = logging.getLogger("luigi-interface")

SUPPORTED_VERSION = "3.8.1"
SWITCH = "PIPELINE_TASK_THREADS"  # "0", "false", "no" or "off": a process per task, as Luigi has it
_luigis_create_worker = luigi.interface._WorkerSchedulerFactory.create_worker


class LockedScheduler:
    """Luigi's in-process scheduler, one call at a time. (luigid's client is not wrapped: each call is an HTTP
    request of its own, as Luigi's keep-alive thread already sends them beside the worker's loop, and luigid
    answers one at a time; waiting on a lock behind another call's retries would only delay it.)"""

    def __init__(self, scheduler):
        self.wrapped = scheduler
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        value = getattr(self.wrapped, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def locked(*args, **kwargs):
            with self._lock:
                return value(*args, **kwargs)

        setattr(self, name, locked)  # made once per method: __getattr__ is not asked again
        return locked


def unwrapped(scheduler):
    """The scheduler a LockedScheduler holds, or the scheduler itself."""
    return getattr(scheduler, "wrapped", scheduler)


class TaskThread(luigi.worker.ContextManagedTaskProcess):
    """Luigi's task runner with a thread where it had a process; `run()` is Luigi's, unchanged."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"task {self.task.task_id}", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def exitcode(self) -> int | None:  # Luigi's run() reports every outcome on the result queue itself
        return None if self.is_alive() else 0

    @property
    def pid(self) -> int:  # type: ignore[override]
        return os.getpid()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def terminate(self) -> None:
        """Only at the worker's exit after an error (a thread cannot be stopped): a daemon thread ends with the
        process, and what it was writing is left as a kill leaves it."""


def _put_back(task, folder: str, environment: dict[str, str]) -> None:
    """The current folder and environment as the worker started with them (tasks running beside this one may
    be what changed them: the warning names the task that just ended)."""
    if os.getcwd() != folder:
        logger.warning("%s: the current folder became %s while it ran; put back to %s", task, os.getcwd(), folder)
        os.chdir(folder)
    if changed := sorted({key for key, _ in set(os.environ.items()) ^ set(environment.items())}):
        logger.warning("%s: the environment changed while it ran (%s); put back", task, ", ".join(changed))
        for key in changed:  # only these: the other threads keep reading the rest
            if key in environment:
                os.environ[key] = environment[key]
            else:
                os.environ.pop(key, None)


class _PutBackFirst:
    """The worker's result queue, as a task thread posts its outcome to it: the current folder and environment are
    put back first, so the next task (which the worker may start on that outcome) finds them as they were."""

    def __init__(self, results, task, state: tuple[str, dict[str, str]]):
        self.results, self.task, self.state = results, task, state

    def put(self, outcome) -> None:
        _put_back(self.task, *self.state)
        self.results.put(outcome)


class ThreadWorker(luigi.worker.Worker):
    """Luigi's worker, running the job's tasks in threads (the module's docstring)."""

    def __init__(self, scheduler=None, *args, **kwargs):
        scheduler = scheduler or luigi.scheduler.Scheduler()
        if isinstance(scheduler, luigi.scheduler.Scheduler):  # in this process: its state is shared by the threads
            scheduler = LockedScheduler(scheduler)
        super().__init__(scheduler, *args, **kwargs)
        self._process_state = (os.getcwd(), dict(os.environ))  # what each task thread leaves as it found it

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            postgres.close_idle()  # the tasks' run-log connections, pooled for this worker's run

    def _create_task_process(self, task):
        process = super()._create_task_process(task)
        if not _in_a_thread(task):
            return process
        process.check_complete = _complete_afresh
        if process.timeout_time is None:
            process.__class__ = TaskThread  # Luigi's runner as Luigi made it, started as a thread
            process.use_multiprocessing = True  # so the worker calls start(), not run() in its own loop
            process.result_queue = _PutBackFirst(process.result_queue, task, self._process_state)
        return process


def _in_a_thread(task) -> bool:
    from pipeline.tasks import RunTask  # the tasks module imports this one's users

    return isinstance(task, RunTask)


def _complete_afresh(requirement) -> bool:
    """Luigi's check of a task's requirements just before it runs the task. The job's tasks answer complete() from
    the run's listing of a bucket, which cannot show what another machine's worker made since (a shared run: the
    scheduler gives this worker a task whose requirement an assistant ran); what it calls unfinished is asked of
    the store itself (`RunTask.complete_afresh`), or the task would fail on a requirement that is there."""
    return getattr(requirement, "complete_afresh", requirement.complete)()


def _create_worker(self, scheduler, worker_processes, assistant=False):
    return ThreadWorker(scheduler=scheduler, worker_processes=worker_processes, assistant=assistant)


def apply() -> bool:
    """Tasks in threads for the `luigi` command and luigi.build; False (and Luigi as it is) if the version is not
    the one this code mirrors, or the switch is off."""
    if os.environ.get(SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        logger.debug("Tasks run in processes: %s=%s", SWITCH, os.environ[SWITCH])
        revert()
        return False
    if luigi.__version__ != SUPPORTED_VERSION:
        logger.debug("Tasks run in processes: luigi %s is not %s", luigi.__version__, SUPPORTED_VERSION)
        return False
    luigi.interface._WorkerSchedulerFactory.create_worker = _create_worker  # type: ignore[method-assign]
    return True


def revert() -> None:
    luigi.interface._WorkerSchedulerFactory.create_worker = _luigis_create_worker  # type: ignore[method-assign]
