"""The job's tasks run in threads of the `luigi` process (pipeline/task_threads.py): side by side, scheduled by
Luigi, one scheduler call at a time, and each task on its own: what one changes in the process is put back
before the next, and a task that must be stoppable (a worker timeout) keeps Luigi's process.

How a failing, hanging or hostile dataset fails alone is tested where those faults are (tests/test_faults.py,
tests/test_transport.py), on the same runner; the run log raced by threads in tests/test_runlog_engines.py."""

import os
import threading
import time
from pathlib import Path

import luigi
import luigi.configuration
import luigi.scheduler
import pytest
from luigi.worker import Worker

from pipeline import keep_alive, task_threads
from pipeline.task_threads import LockedScheduler, ThreadWorker
from pipeline.tasks import RunTask
from tests.fixtures import HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import Site, run_daily
from tests.loopback_server import LoopbackServer

DATASETS = 6


@pytest.fixture
def started(tmp_path):
    """Where each of the job's tasks started: a line "<pid> <thread name> <task family>" per task, written by a
    START handler, which Luigi runs where the task runs (a file: a task process's memory is its own)."""
    record = tmp_path / "started.txt"

    def note(task):
        with open(record, "a", encoding="utf-8") as out:
            out.write(f"{os.getpid()} {threading.current_thread().name.split()[0]} {task.task_family}\n")

    RunTask.event_handler(luigi.Event.START)(note)
    yield lambda: [line.split() for line in record.read_text(encoding="utf-8").splitlines()]
    RunTask._event_callbacks[RunTask][luigi.Event.START].discard(note)


def slow_site(server: LoopbackServer) -> Site:
    site = Site(server)
    for n in range(DATASETS):
        site.dataset(f"th{n:02d}-hosp", "2025-04-08", {f"T{n}.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(900, 5))})
    return site


@pytest.mark.integration
def test_the_versions_run_side_by_side_in_threads_of_this_process(started, tmp_path):
    threads_before = set(threading.enumerate())  # an earlier test's threads may end meanwhile: not counted
    with LoopbackServer(bandwidth=300_000) as server:  # about 0.4 s a file: downloads overlap if they can
        site = slow_site(server)
        ok, report = run_daily(site, tmp_path / "data", workers=4)
        overlap = server.peak_concurrency_for("/provider-data/sites")

    assert ok and report["counts"]["downloaded"] == DATASETS
    tasks = started()
    assert len(tasks) == 2 + 2 * DATASETS + 1  # the catalog, the run (twice: it yields), each Download, Normalize
    assert {pid for pid, _, _ in tasks} == {str(os.getpid())}
    assert {thread for _, thread, _ in tasks} == {"task"}
    assert overlap >= 2
    deadline = time.monotonic() + 10  # a task's thread ends just after it reported its result
    while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) - threads_before == set()


@pytest.mark.integration
def test_with_a_worker_timeout_the_tasks_keep_a_process_each(started, tmp_path):
    """Only a process can be stopped from outside, so a task that must be (`[worker] timeout`) keeps Luigi's."""
    config = luigi.configuration.get_config()
    config.set("worker", "timeout", "600")
    try:
        with LoopbackServer() as server:
            ok, report = run_daily(slow_site(server), tmp_path / "data", workers=2)
    finally:
        config.remove_option("worker", "timeout")

    assert ok and report["counts"]["downloaded"] == DATASETS
    tasks = started()
    assert len(tasks) == 2 + 2 * DATASETS + 1
    assert str(os.getpid()) not in {pid for pid, _, _ in tasks}
    assert len({pid for pid, _, _ in tasks}) == len(tasks)


class _LeavesTheProcessChanged(RunTask):
    """Moves to another folder and sets a variable, as a careless task might; writes its output."""

    n = luigi.IntParameter()

    def output(self):
        return luigi.LocalTarget(str(Path(self.data_dir) / f"done-{self.n}"))

    def run(self):
        elsewhere = Path(self.data_dir) / f"elsewhere-{self.n}"
        elsewhere.mkdir(parents=True)
        os.chdir(elsewhere)
        os.environ[f"PIPELINE_TEST_LEFT_{self.n}"] = "set by a task"
        Path(self.output().path).write_text("done", encoding="utf-8")


class _SeesTheProcess(RunTask):
    """Runs after the careless ones: records the folder and environment it was given."""

    def requires(self):
        return [self.clone(_LeavesTheProcessChanged, n=n) for n in range(3)]

    def output(self):
        return luigi.LocalTarget(str(Path(self.data_dir) / "seen"))

    def run(self):
        seen = [os.getcwd(), *sorted(k for k in os.environ if k.startswith("PIPELINE_TEST_LEFT_"))]
        Path(self.output().path).write_text("\n".join(seen), encoding="utf-8")


@pytest.mark.integration
def test_what_a_task_changes_in_the_process_is_put_back_before_the_next(tmp_path, caplog):
    folder = os.getcwd()
    task = _SeesTheProcess(data_dir=str(tmp_path / "data"), run_id="isolation")
    with caplog.at_level("WARNING", logger="luigi-interface"):
        assert luigi.build([task], local_scheduler=True, workers=3, log_level="WARNING")

    assert (tmp_path / "data" / "seen").read_text(encoding="utf-8") == folder
    assert os.getcwd() == folder and not [k for k in os.environ if k.startswith("PIPELINE_TEST_LEFT_")]
    warnings = [r.getMessage() for r in caplog.records if "put back" in r.getMessage()]
    assert any("the current folder became" in w for w in warnings)
    assert any("the environment changed while it ran (PIPELINE_TEST_LEFT_" in w for w in warnings)
    assert all(w.startswith("_LeavesTheProcessChanged(") for w in warnings)


class _Inside:
    """Counts how many callers are inside its method at once."""

    def __init__(self):
        self.now = self.most = self.calls = 0
        self.label = "not a method"

    def call(self, n: int) -> int:
        self.now += 1
        self.most = max(self.most, self.now)
        time.sleep(0.0005)  # a switch to another thread happens here if one may enter
        self.calls += 1
        self.now -= 1
        return n


def test_the_scheduler_is_entered_by_one_caller_at_a_time():
    inside = _Inside()
    locked = LockedScheduler(inside)

    def caller():
        for n in range(40):
            assert locked.call(n) == n

    callers = [threading.Thread(target=caller) for _ in range(8)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    assert (inside.most, inside.calls, locked.label) == (1, 320, "not a method")


def test_every_worker_luigi_makes_shares_its_in_process_scheduler_behind_the_lock():
    factory = luigi.interface._WorkerSchedulerFactory()
    scheduler = factory.create_local_scheduler()
    worker = factory.create_worker(scheduler=scheduler, worker_processes=8)
    assert isinstance(worker, ThreadWorker)
    assert isinstance(worker._scheduler, LockedScheduler) and worker._scheduler.wrapped is scheduler
    remote = factory.create_remote_scheduler("http://127.0.0.1:9/")  # luigid: HTTP requests, nothing to share
    assert factory.create_worker(scheduler=remote, worker_processes=8)._scheduler is remote


@pytest.mark.integration
def test_many_versions_settle_through_luigis_scheduler_from_eight_threads(tmp_path):
    """200 datasets, 8 threads reporting to the in-process scheduler while the worker asks it for work: every
    version is run once and the run closes with all of them."""
    with LoopbackServer() as server:
        site = Site(server)
        for n in range(200):
            site.dataset(f"m{n:03d}-hosp", "2025-04-08", {f"M{n}.csv": csv_bytes('"A","B"', [f'"{n}","x"'])})
        ok, report = run_daily(site, tmp_path / "data", workers=8)
        fetched = server.count() - 1

    assert ok and report["counts"]["downloaded"] == 200 and fetched == 200
    assert len(list((tmp_path / "data" / "datasets").glob("*/*/normalized.csv"))) == 200


def test_another_luigi_release_or_the_switch_keeps_a_process_per_task(monkeypatch):
    """The runner mirrors Luigi 3.8.1's worker (pinned): another release, or PIPELINE_TASK_THREADS=0, gets Luigi's
    own worker; so does another release with the keep-alive rule (pipeline/keep_alive.py)."""
    factory = luigi.interface._WorkerSchedulerFactory()

    def worker_type() -> type:
        return type(factory.create_worker(scheduler=factory.create_local_scheduler(), worker_processes=2))

    try:
        monkeypatch.setenv(task_threads.SWITCH, "0")
        assert not task_threads.apply() and worker_type() is Worker
        monkeypatch.delenv(task_threads.SWITCH)
        monkeypatch.setattr(luigi, "__version__", "3.9.0")
        assert not task_threads.apply() and not keep_alive.install()
        assert worker_type() is Worker
    finally:
        monkeypatch.undo()
        assert task_threads.apply() and keep_alive.install()
    assert worker_type() is ThreadWorker


@pytest.mark.integration
@pytest.mark.parametrize("drop_source", [False, True])
def test_a_version_another_machine_downloaded_after_this_process_listed_the_bucket_is_there_for_its_next_task(
    site, s3, bucket_data, tmp_path, luigi_setting, drop_source
):
    """A shared run: this process listed the bucket as the run started, then an assistant's worker downloaded a
    version, and the scheduler gives this worker the version's NormalizeCsv. The listing cannot show the
    download; Luigi's check of the task's requirements, just before it runs it, asks the bucket itself (it
    failed the dataset with "Unfulfilled dependency at run time"). With `[retention] drop_source` the other machine
    finished it and deleted its source: that counts as there too."""
    from pipeline import layout
    from pipeline.catalog import Catalog
    from pipeline.tasks import HospitalsDaily, NormalizeCsv
    from tests.harness import run_command, write_project_cfg

    site.dataset("sh00-hosp", "2025-04-08", {"S0.csv": csv_bytes(HEADER_OAS_CAHPS, quoted_rows(20, 5))})
    luigi_setting("retention", "drop_source", str(drop_source).lower())
    daily = HospitalsDaily(data_dir=bucket_data.dir, run_id="shared", metastore_url=site.metastore_url)
    daily.store.prefetch("datasets")  # this machine's listing: nothing there yet
    write_project_cfg(site, tmp_path)
    config = (tmp_path / "luigi.cfg").read_text(encoding="utf-8")
    assert "# drop_source = false\n" in config
    config = config.replace("# drop_source = false\n", f"drop_source = {str(drop_source).lower()}\n")
    (tmp_path / "luigi.cfg").write_text(config, encoding="utf-8")
    other = run_command(tmp_path, "--data-dir", bucket_data.dir, "--run-id", "shared")  # the other machine
    assert other.returncode == 0, other.stdout + other.stderr
    [version] = Catalog.from_json(daily.store.read_json(layout.catalog_snapshot("shared"))[0]).versions
    normalize = NormalizeCsv.for_version(daily, version, wrapper_task_id=daily.task_id)
    [download] = luigi.task.flatten(normalize.requires())
    assert not download.complete()  # as the listing has it
    assert bucket_data.exists(f"{normalize.folder}/source.csv") is not drop_source

    with ThreadWorker() as worker:
        worker._create_task_process(normalize).run()  # what the worker's start of the task runs, in this thread
        task_id, status, explanation, *_ = worker._task_result_queue.get(timeout=30)
    assert (task_id, status) == (normalize.task_id, luigi.scheduler.DONE), explanation
