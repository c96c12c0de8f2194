"""pipeline/scheduler_speedups.py: Luigi's scheduler gives the same answers, and leaves the same state, with the
patch as without it; it is a no-op on another Luigi; a run of the job is the same either way; luigid runs it.

The Scheduler tests drive luigi.scheduler.Scheduler directly (as Luigi's own test/scheduler_api_test.py does)
under a fake clock: the same seeded sequence of calls runs once with Luigi's own functions and once patched, and
every reply and the final state are compared, as is the patch's index against one rebuilt from scratch.
"""

import contextlib
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import types
from pathlib import Path

import luigi
import pytest
from luigi import scheduler as luigi_scheduler
from luigi.scheduler import (
    BATCH_RUNNING,
    DISABLED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    UNKNOWN,
    Scheduler,
    SimpleTaskState,
)

from pipeline import scheduler_speedups
from tests.fixtures import HEADER_IPF, HEADER_OAS_CAHPS, csv_bytes, quoted_rows
from tests.harness import Site, query, run_daily

PATCHED = [(cls, name) for cls, name, _ in scheduler_speedups._patches()]


@pytest.fixture(autouse=True)
def patch_restored(monkeypatch):
    """Each test starts patched (as importing pipeline leaves it) and leaves it patched."""
    monkeypatch.delenv(scheduler_speedups.SWITCH, raising=False)
    assert scheduler_speedups.apply()
    yield
    scheduler_speedups.revert()
    monkeypatch.delenv(scheduler_speedups.SWITCH, raising=False)
    assert scheduler_speedups.apply()


@contextlib.contextmanager
def patch_state(on: bool):
    if on:
        assert scheduler_speedups.apply()
    else:
        scheduler_speedups.revert()
    try:
        yield
    finally:
        assert scheduler_speedups.apply()


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """luigi.scheduler (and the patch) read time.time(): one that only moves when a test moves it.

    Luigi also iterates Worker.tasks, a set of scheduler Tasks hashed by memory address (rank ties of a worker
    with few tasks, the running tasks count_pending lists, _upstream_status's order-dependent memo), so two runs
    of Luigi itself can differ there; hashed by task id, the order is the same in every run of this process."""
    clock = Clock()
    fake = types.SimpleNamespace(time=clock.time)
    monkeypatch.setattr(luigi_scheduler, "time", fake)
    monkeypatch.setattr(scheduler_speedups, "time", fake)
    monkeypatch.setattr(luigi_scheduler.Task, "__hash__", lambda task: hash(task.id), raising=False)
    return clock


# -- switching the patch on and off ------------------------------------------------------------------------------


def test_importing_pipeline_patches_luigi_3_8_1():
    assert luigi.__version__ == "3.8.1"
    assert scheduler_speedups.is_applied()
    for cls, name in PATCHED:
        assert cls.__dict__[name] is not scheduler_speedups._original(cls, name), name


def test_revert_puts_luigis_functions_back():
    originals = {(cls, name): scheduler_speedups._original(cls, name) for cls, name in PATCHED}
    scheduler_speedups.revert()
    assert not scheduler_speedups.is_applied()
    for (cls, name), function in originals.items():
        assert cls.__dict__[name] is function


def test_on_another_luigi_version_it_does_nothing_and_says_so(monkeypatch, caplog):
    scheduler_speedups.revert()
    before = {(cls, name): cls.__dict__[name] for cls, name in PATCHED}
    monkeypatch.setattr(luigi, "__version__", "3.9.0")
    with caplog.at_level(logging.DEBUG, logger="pipeline.scheduler_speedups"):
        assert scheduler_speedups.apply() is False
    assert not scheduler_speedups.is_applied()
    assert {(cls, name): cls.__dict__[name] for cls, name in PATCHED} == before
    assert "written for luigi 3.8.1, this is luigi 3.9.0" in caplog.text
    monkeypatch.setattr(luigi, "__version__", "3.8.1")


def test_the_environment_can_switch_it_off(monkeypatch, caplog):
    scheduler_speedups.revert()
    monkeypatch.setenv(scheduler_speedups.SWITCH, "0")
    with caplog.at_level(logging.DEBUG, logger="pipeline.scheduler_speedups"):
        assert scheduler_speedups.apply() is False
    assert not scheduler_speedups.is_applied()
    assert f"{scheduler_speedups.SWITCH}=0" in caplog.text


def test_a_subclass_overriding_what_it_relies_on_gets_luigis_code(clock):
    class Ranked(Scheduler):
        def _rank(self, task):
            return -task.priority, -task.time

    sch = Ranked(resources={}, prune_on_get_work=True, record_task_history=False)
    for i, priority in enumerate([1, 5, 3]):
        clock.now += 1
        sch.add_task(worker="w", task_id=f"t{i}", priority=priority)
    assert sch.get_work(worker="w", current_tasks=[])["task_id"] == "t0"  # the lowest priority, as it asks
    assert scheduler_speedups._INDEXES[sch._state] is False


# -- the Scheduler, call by call --------------------------------------------------------------------------------


def check_index(sch: Scheduler) -> None:
    """The patch's running index equals one built from the state as it is now."""
    state = sch._state
    index = scheduler_speedups._live_index(state)
    if index is None:
        return
    fresh = scheduler_speedups._TaskIndex(state)
    ready = {
        task.id
        for task in state._status_tasks[PENDING].values()
        if all(dep in state._tasks and state._tasks[dep].status == DONE for dep in task.deps)
    }
    if index.ordered:
        assert set(index.live) == ready
        for task_id, (_, signature, key) in index.live.items():
            task = state._tasks[task_id]
            assert signature == scheduler_speedups._signature(task.resources)
            assert key[:2] == (-task.priority, task.time)
        pending = list(state._status_tasks[PENDING])
        assert sorted(pending, key=index.seq.__getitem__) == pending  # ties keep the PENDING dict's order
    assert index.undone == fresh.undone
    assert index.watch >= fresh.watch
    assert {w: c for w, c in index.counts.items() if any(c)} == {w: c for w, c in fresh.counts.items() if any(c)}
    assert index.pending_resources.keys() == fresh.pending_resources.keys()
    assert sorted(state._tasks, key=index.pos.__getitem__) == list(state._tasks)  # prune's visiting order


def snapshot(sch: Scheduler) -> dict:
    state = sch._state
    tasks = {}
    for task_id, t in state._tasks.items():
        tasks[task_id] = {
            "status": t.status,
            "priority": t.priority,
            "deps": sorted(t.deps),
            "workers": list(t.workers),
            "stakeholders": sorted(t.stakeholders, key=str),
            "remove": t.remove,
            "retry": t.retry,
            "worker_running": t.worker_running,
            "resources": t.resources,
            "resources_running": getattr(t, "resources_running", None),
            "batch_id": t.batch_id,
            "time": t.time,
            "updated": t.updated,
            "time_running": t.time_running,
            "expl": t.expl,
            "failures": list(t.failures),
            "disable_time": t.scheduler_disable_time,
            "runnable": t.runnable,
            "params": t.params,
        }
    return {
        "tasks": tasks,
        "order": list(state._tasks),
        "by_status": {status: list(found) for status, found in state._status_tasks.items() if found},
        "workers": {
            w: {
                "tasks": sorted(t.id for t in worker.tasks),
                "info": worker.info,
                "disabled": worker.disabled,
                "last_active": worker.last_active,
                "last_get_work": worker.last_get_work,
            }
            for w, worker in state._active_workers.items()
        },
    }


RESOURCE_SETS = [{}, {}, {}, {"r": 1}, {"r": 1}, {"r": 2}, {"s": 1}, {"r": 1, "s": 1}, {"big": 3}]


class Driver:
    """Workers talking to one Scheduler, deciding from its answers with a seeded random source.

    With the same seed and the same answers, both runs make the same calls; the first differing answer shows."""

    def __init__(self, seed: int, clock: Clock):
        self.rng = rng = random.Random(seed)
        self.clock = clock
        self.transcript: list = []
        self.config = {
            "prune_on_get_work": rng.random() < 0.8,
            "retry_delay": rng.choice([0.0, 2.0, 900.0]),
            "remove_delay": rng.choice([1.0, 5.0, 600.0]),
            "worker_disconnect_delay": rng.choice([3.0, 60.0]),
            "disable_persist": rng.choice([4, 86400]),
            "retry_count": rng.choice([1, 2, 999999999]),
            "disable_window": 3600,
            "stable_done_cooldown_secs": rng.choice([0, 0, 10]),
            "record_task_history": False,
        }
        self.resources = rng.choice([{"r": 2, "s": 1}, {"r": 1}, {"r": 3, "s": 2, "big": 2}, {}])
        self.ties = rng.random() < 0.5  # else the clock moves before every call: only placeholders tie
        self.n_tasks = rng.randint(3, 36)
        self.workers = [f"w{i}" for i in range(rng.randint(1, 3))]
        self.assistant = f"a{seed}" if rng.random() < 0.2 else None
        self.tasks = {}
        for i in range(self.n_tasks):
            family = rng.choice(["A", "A", "B", "C"])
            self.tasks[f"T{i:02d}"] = {
                "family": family,
                "deps": sorted({f"T{j:02d}" for j in rng.sample(range(i), min(i, rng.choice([0, 0, 1, 1, 2, 3])))}),
                "priority": rng.choice([0, 0, 0, 0, 1, 3, 10]),
                "resources": rng.choice(RESOURCE_SETS),
                "params": {"p": str(i), "q": str(i % 2)},
                "batchable": family == "B",
            }
        self.owned = {w: sorted(rng.sample(sorted(self.tasks), rng.randint(1, self.n_tasks))) for w in self.workers}
        self.running: dict[str, set] = {w: set() for w in [*self.workers, self.assistant] if w}
        self.batches = 0

    def call(self, sch: Scheduler, method: str, **kwargs):
        if not self.ties:
            self.clock.now += 1e-6
        result = getattr(sch, method)(**kwargs)
        self.transcript.append((round(self.clock.now - 1_700_000_000, 6), method, kwargs, result))
        return result

    def schedule(self, sch, worker: str, task_id: str, status=PENDING, **extra):
        spec = self.tasks[task_id]
        self.call(
            sch,
            "add_task",
            worker=worker,
            task_id=task_id,
            status=status,
            deps=spec["deps"],
            runnable=status == PENDING,
            priority=spec["priority"],
            resources=dict(spec["resources"]),
            family=spec["family"],
            module="m",
            params=dict(spec["params"]),
            batchable=spec["batchable"],
            **extra,
        )

    def run(self, sch: Scheduler, steps: int, check=None, restart: Path | None = None) -> Scheduler:
        """Returns the scheduler at the end: with `restart` (a state file), luigid's restart halfway through."""
        rng = self.rng
        for worker in self.workers:
            self.call(sch, "add_worker", worker=worker, info={"workers": rng.choice([1, 1, 2, 4])})
            if rng.random() < 0.3:
                self.call(
                    sch,
                    "add_task_batcher",
                    worker=worker,
                    task_family="B",
                    batched_args=["p"],
                    max_batch_size=rng.choice([2, 3, float("inf")]),
                )
            for task_id in reversed(self.owned[worker]):  # dependencies last, as Luigi's worker adds them
                if rng.random() < 0.1:
                    self.schedule(sch, worker, task_id, status=DONE)
                else:
                    self.schedule(sch, worker, task_id)
                if rng.random() < 0.3:
                    self.clock.now += rng.choice([0.0, 0.0, 1e-6, 0.25])
        for step in range(steps):
            if restart and step == steps // 2:
                sch.dump()  # what luigid does on SIGTERM, then load() when it starts again
                sch = Scheduler(resources=dict(self.resources), state_path=str(restart), **self.config)
                sch.load()
                self.transcript.append(("restarted", snapshot(sch)))
            self.step(sch)
            if check:
                check(sch)
        return sch

    def step(self, sch: Scheduler) -> None:
        rng = self.rng
        worker = rng.choice(self.workers + ([self.assistant] if self.assistant else []))
        action = rng.random()
        if action < 0.40:
            reply = self.call(
                sch,
                "get_work",
                worker=worker,
                host="h",
                assistant=worker == self.assistant,
                current_tasks=sorted(self.running[worker]) if rng.random() < 0.9 else None,
            )
            if reply.get("batch_id"):
                self.batches += 1
                batch_task = f"batch{self.batches}"
                self.call(
                    sch,
                    "add_task",
                    worker=worker,
                    task_id=batch_task,
                    status=RUNNING,
                    batch_id=reply["batch_id"],
                    family=reply["task_family"],
                    params=reply["task_params"],
                    module="m",
                )
                self.running[worker].add(batch_task)
            elif reply.get("task_id"):
                self.running[worker].add(reply["task_id"])
        elif action < 0.65 and self.running[worker]:
            task_id = rng.choice(sorted(self.running[worker]))
            self.running[worker].discard(task_id)
            outcome = rng.choice([DONE, DONE, DONE, FAILED, "yield"])
            if outcome == "yield" and task_id in self.tasks:
                new = sorted(rng.sample(sorted(self.tasks), rng.randint(1, 3)))
                for dep in new:
                    self.schedule(sch, worker, dep)
                self.call(
                    sch,
                    "add_task",
                    worker=worker,
                    task_id=task_id,
                    status=PENDING,
                    runnable=None,
                    new_deps=new,
                    expl=json.dumps(""),
                    resources=dict(self.tasks[task_id]["resources"]),
                    family=self.tasks[task_id]["family"],
                    params=dict(self.tasks[task_id]["params"]),
                )
            else:
                status = FAILED if outcome == FAILED else DONE
                self.call(
                    sch,
                    "add_task",
                    worker=worker,
                    task_id=task_id,
                    status=status,
                    runnable=None,
                    expl=json.dumps("boom" if status == FAILED else ""),
                )
        elif action < 0.72:
            self.clock.now += rng.choice([0.0, 1e-6, 0.5, 1.0, 2.5, 4.0, 61.0, 700.0, 1000.0])
        elif action < 0.76:
            self.call(sch, "prune")
        elif action < 0.80:
            self.call(sch, "count_pending", worker=worker)
        elif action < 0.85:
            self.call(sch, "ping", worker=worker)
        elif action < 0.89 and worker in self.workers:  # (re)schedule a task, e.g. from a second run
            task_id = rng.choice(sorted(self.tasks))
            self.schedule(sch, worker, task_id, status=rng.choice([PENDING, PENDING, DONE]))
        elif action < 0.91:
            task_id = rng.choice(sorted(self.tasks))
            self.call(sch, rng.choice(["mark_as_done", "forgive_failures", "re_enable_task"]), task_id=task_id)
        elif action < 0.92:
            self.call(sch, "update_resource", resource=rng.choice(["r", "s", "big"]), amount=rng.randint(0, 3))
        elif action < 0.93:
            self.call(sch, rng.choice(["pause", "unpause", "unpause"]))
        elif action < 0.935 and len(self.workers) > 1:
            self.call(sch, "disable_worker", worker=worker)
        elif action < 0.95 and self.running[worker]:
            task_id = rng.choice(sorted(self.running[worker]))
            self.call(sch, "decrease_running_task_resources", task_id=task_id, decrease_resources={"r": 1})
        elif action < 0.96:  # a task taking long enough for a worker to time out, or a worker gone for good
            self.clock.now += self.config["worker_disconnect_delay"] + 1
        else:  # a task that keeps failing gets DISABLED (retry_count), upstream of others
            task_id = rng.choice(sorted(self.tasks))
            self.call(
                sch, "add_task", worker=worker, task_id=task_id, status=FAILED, runnable=None, expl=json.dumps("again")
            )


def drive(seed: int, on: bool, clock: Clock, steps: int = 160, check=None, restart: Path | None = None):
    clock.now = 1_700_000_000.0
    with patch_state(on):
        driver = Driver(seed, clock)
        config = {"state_path": str(restart)} if restart else {}
        sch = Scheduler(resources=dict(driver.resources), **driver.config, **config)
        sch = driver.run(sch, steps, check=check if on else None, restart=restart)
        return driver.transcript, snapshot(sch), sch


def first_difference(a: list, b: list):
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i, x, y
    return len(min(a, b, key=len)), None, None


def assert_same_as_luigi(seed: int, clock, restart: Path | None = None) -> None:
    """One seeded call sequence, with and without the patch: every answer and the final state are Luigi's."""
    original, original_state, _ = drive(seed, False, clock, restart=restart and restart / "luigi.pickle")
    patched, patched_state, sch = drive(
        seed, True, clock, check=check_index, restart=restart and restart / "patch.pickle"
    )
    assert scheduler_speedups._live_index(sch._state) is not None, f"seed {seed}: the patch gave up"
    if patched != original:
        at, want, got = first_difference(original, patched)
        pytest.fail(f"seed {seed}, call {at}:\nLuigi:   {want}\npatched: {got}")
    assert patched_state == original_state, f"seed {seed}"


# The first 100 seeds in the fast loop; the other 400 (and the driver's reach over 500) with the integration tests.
@pytest.mark.parametrize("block", [b if b < 2 else pytest.param(b, marks=pytest.mark.integration) for b in range(10)])
def test_same_answers_and_state_as_luigi(block, clock):
    for seed in range(block * 50, block * 50 + 50):
        assert_same_as_luigi(seed, clock)


def test_same_answers_and_state_as_luigi_across_a_luigid_restart(clock, tmp_path):
    for seed in range(1000, 1060):
        assert_same_as_luigi(seed, clock, restart=tmp_path)


@pytest.mark.integration
def test_the_driver_reaches_the_cases_that_matter(clock, monkeypatch):
    """The seeds above choose tasks with resources and batches, hit rank ties, DISABLED and removed tasks, count
    pending tasks below DISABLED ones, and reach the cases the patch leaves to Luigi's own code."""
    seen = set()
    below = scheduler_speedups._TaskIndex.below_disabled
    sorted_search = scheduler_speedups._sorted_search

    def recording_below(index):
        found = below(index)
        seen.add("cycle below DISABLED" if found is None else "below DISABLED" if found else "nothing below")
        return found

    monkeypatch.setattr(scheduler_speedups._TaskIndex, "below_disabled", recording_below)
    monkeypatch.setattr(scheduler_speedups, "_sorted_search", lambda *a: seen.add("Luigi's loop") or sorted_search(*a))
    for seed in range(500):
        transcript, state, _ = drive(seed, True, clock)
        for _, method, kwargs, result in (entry for entry in transcript if len(entry) == 4):
            if method == "get_work" and isinstance(result, dict):
                if result.get("batch_id"):
                    seen.add("batch")
                if result.get("task_id") and kwargs.get("assistant"):
                    seen.add("assistant")
                if result.get("task_id") and state["tasks"].get(result["task_id"], {}).get("resources"):
                    seen.add("resources")
        statuses = {task["status"] for task in state["tasks"].values()}
        seen |= statuses & {DISABLED, FAILED, BATCH_RUNNING, UNKNOWN}
        times = [task["time"] for task in state["tasks"].values()]
        if len(times) != len(set(times)):
            seen.add("ties")
        if len(state["tasks"]) < len({e[2]["task_id"] for e in transcript if len(e) == 4 and e[1] == "add_task"}):
            seen.add("removed")
    assert seen >= {
        "batch",
        "assistant",
        "resources",
        DISABLED,
        FAILED,
        UNKNOWN,
        "ties",
        "removed",
        "below DISABLED",
        "cycle below DISABLED",
        "Luigi's loop",
    }, seen


def test_get_work_by_priority_then_age_within_resources_and_dependencies(clock):
    def run():
        clock.now = 1_700_000_000.0
        sch = Scheduler(resources={"db": 1}, prune_on_get_work=True, record_task_history=False)
        sch.add_worker("w", {"workers": 4})
        specs = [
            ("old", 0, {}, []),
            ("urgent", 10, {"db": 1}, []),
            ("urgent2", 10, {"db": 1}, []),
            ("blocked", 100, {}, ["missing"]),
            ("after_old", 5, {}, ["old"]),
            ("tie_a", 3, {}, []),
            ("tie_b", 3, {}, []),
        ]
        for task_id, priority, resources, deps in specs:
            if task_id != "tie_b":  # created at the same time as tie_a
                clock.now += 1
            sch.add_task(worker="w", task_id=task_id, priority=priority, resources=resources, deps=deps)
        order = []
        for _ in range(7):
            reply = sch.get_work(worker="w", current_tasks=order)
            order.append(reply["task_id"])
            if reply["task_id"] == "old":
                sch.add_task(worker="w", task_id="old", status=DONE)
        return order, sch.count_pending("w"), snapshot(sch)

    with patch_state(False):
        original = run()
    assert run() == original
    order, pending, _ = original
    # "old" has after_old's priority 5 (dependencies inherit their dependents'); urgent2 waits for "db";
    # tie_a and tie_b have the same rank: the one added first goes first
    assert order == ["urgent", "old", "after_old", "tie_a", "tie_b", None, None]
    assert pending["n_pending_tasks"] == 2  # urgent2 and blocked


def test_count_pending_leaves_out_tasks_below_a_disabled_one_as_luigi_does(clock):
    def run():
        sch = Scheduler(resources={}, retry_count=1, record_task_history=False)
        sch.add_task(worker="w", task_id="top", deps=["mid"])
        sch.add_task(worker="w", task_id="mid", deps=["bottom"])
        sch.add_task(worker="w", task_id="bottom")
        sch.add_task(worker="w", task_id="other")
        assert sch.get_work(worker="w")["task_id"] in ("bottom", "other")
        sch.add_task(worker="w", task_id="bottom", status=FAILED)  # retry_count=1: DISABLED at once
        return sch._state.get_task("bottom").status, sch.count_pending("w")

    with patch_state(False):
        original = run()
    assert original == run()
    assert original[0] == DISABLED and original[1]["n_pending_tasks"] == 1


@pytest.mark.parametrize("cycle", [False, True])
def test_count_pending_below_disabled_tasks_as_luigi_counts_them(clock, monkeypatch, cycle):
    """A DISABLED task hides the PENDING tasks above it (through PENDING tasks only); in a cycle Luigi's answer
    depends on its walk's order, and the patch asks Luigi's own count_pending."""
    answers = []
    below = scheduler_speedups._TaskIndex.below_disabled
    monkeypatch.setattr(
        scheduler_speedups._TaskIndex, "below_disabled", lambda self: answers.append(below(self)) or answers[-1]
    )

    def run():
        clock.now = 1_700_000_000.0
        sch = Scheduler(resources={}, retry_count=1, record_task_history=False)
        sch.add_task(worker="w", task_id="top", deps=["mid", "other"])
        sch.add_task(worker="w", task_id="mid", deps=["bottom", "x"] + (["top"] if cycle else []))
        sch.add_task(worker="w", task_id="bottom")
        sch.add_task(worker="w", task_id="x")
        sch.add_task(worker="w", task_id="other", deps=["done"])
        sch.add_task(worker="w", task_id="done", status=DONE)
        sch.add_task(worker="v", task_id="beside", deps=["bottom"])  # v's task below the disabled one
        sch.add_task(worker="v", task_id="running")
        assert sch.get_work(worker="v")["task_id"] == "running"
        sch.add_task(worker="w", task_id="bottom", status=FAILED)  # retry_count=1: DISABLED at once
        return [sch.count_pending(w) for w in ("w", "v")], snapshot(sch)

    with patch_state(False):
        original = run()
    assert run() == original
    (w, v), state = original
    assert state["tasks"]["bottom"]["status"] == DISABLED
    assert v["n_pending_tasks"] == 0  # "beside" is below it; "running" is running
    if cycle:
        assert answers[-1] is None  # left to Luigi
    else:
        assert w["n_pending_tasks"] == 2  # x and other; top and mid are below "bottom"
        assert answers[-1] == {"top", "mid", "beside"}


def test_prune_fails_the_tasks_of_a_dead_worker_and_removes_finished_ones_as_luigi_does(clock):
    def run():
        clock.now = 1_700_000_000.0
        sch = Scheduler(
            resources={}, worker_disconnect_delay=10, remove_delay=5, retry_delay=3, record_task_history=False
        )
        for worker in ("w1", "w2"):
            for name in ("a", "b"):
                clock.now += 0.001
                sch.add_task(worker=worker, task_id=f"{worker}-{name}")
        assert sch.get_work(worker="w1")["task_id"] == "w1-a"
        sch.add_task(worker="w2", task_id="w2-a", status=DONE)
        clock.now += 11
        sch.ping(worker="w2")
        sch.prune()  # w1 is gone: its running task fails, its tasks lose their stakeholder
        after_first = snapshot(sch)
        clock.now += 6
        sch.prune()  # w1's tasks are removed remove_delay later
        return after_first, snapshot(sch)

    with patch_state(False):
        original = run()
    assert original == run()
    first, second = original
    assert first["tasks"]["w1-a"]["status"] == FAILED and "w1" not in first["workers"]
    assert sorted(second["tasks"]) == ["w2-a", "w2-b"]


def test_a_rank_tie_that_luigi_breaks_in_set_order_is_left_to_luigis_loop(clock, monkeypatch):
    sch = Scheduler(resources={}, record_task_history=False)
    for task_id in ("a1", "a2", "b1", "b2", "b3"):  # all created at the same time
        sch.add_task(worker=task_id[0], task_id=task_id)
    calls = []
    sorted_search = scheduler_speedups._sorted_search
    monkeypatch.setattr(scheduler_speedups, "_sorted_search", lambda *a: calls.append(a[2]) or sorted_search(*a))
    # Worker "a" has 2 tasks, fewer than the 5 pending: Luigi sorts its Worker.tasks set, ties in set order.
    first = sch.get_work(worker="a")["task_id"]
    assert first in ("a1", "a2")
    assert calls == ["a"]
    sch.add_task(worker="a", task_id=first, status=DONE)
    clock.now += 1
    sch.add_task(worker="a", task_id="a3")
    other = sch.get_work(worker="a", current_tasks=[])["task_id"]
    assert other == ({"a1", "a2"} - {first}).pop()
    assert calls == ["a"]  # no tie left (a3 is younger): answered from the index


def test_get_work_touches_few_tasks_when_many_wait(clock, monkeypatch):
    """The point of the patch: with thousands of waiting tasks a call looks at a handful of them."""
    sch = Scheduler(resources={"http": 2}, prune_on_get_work=True, record_task_history=False)
    for i in range(3000):
        sch.add_task(worker="w", task_id=f"n{i}", deps=[f"d{i}"])
        sch.add_task(worker="w", task_id=f"d{i}", resources={"http": 1})
    visited = []
    visit = scheduler_speedups._Search.visit
    monkeypatch.setattr(scheduler_speedups._Search, "visit", lambda self, t: visited.append(t) or visit(self, t))
    running = []
    for _ in range(3):
        running.append(sch.get_work(worker="w", current_tasks=running)["task_id"])
    assert running == ["d0", "d1", None]
    assert len(visited) < 20


# -- the job ------------------------------------------------------------------------------------------------------


def publish(site: Site, failing: bool = True) -> None:
    for n in range(6):
        body = csv_bytes(HEADER_IPF if n % 2 else HEADER_OAS_CAHPS, quoted_rows(5 + n, 4 if n % 2 else 5, f"{n}"))
        site.dataset(f"ds{n:02d}-test", "2025-04-08", {f"File{n}.csv": body})
    if failing:
        site.server.add(site.dataset("bad0-test", "2025-04-08", {"Bad.csv": b"x"})[0], b"", status=404)


def outcome(data_dir: Path, report: dict) -> dict:
    files = {
        str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and p.suffix == ".csv" and "datasets" in p.parts
    }
    datasets = sorted((d["identifier"], d["status"], d["rows"], d["sha256"], d["error"]) for d in report["datasets"])
    return {
        "status": report["status"],
        "counts": report["counts"],
        "datasets": datasets,
        "files": files,
        "versions": query(data_dir, "SELECT identifier, status, rows, sha256 FROM versions ORDER BY identifier"),
    }


@pytest.mark.integration
def test_the_job_gives_the_same_results_with_and_without_the_patch(site, tmp_path):
    publish(site)
    results = {}
    for on in (False, True):
        with patch_state(on):
            data_dir = tmp_path / ("patched" if on else "luigi")
            first_ok, first = run_daily(site, data_dir, workers=4)
            again_ok, again = run_daily(site, data_dir, workers=4)
            results[on] = (first_ok, outcome(data_dir, first), again_ok, again["counts"])
    assert results[True] == results[False]
    first_ok, first, again_ok, again = results[True]
    assert not first_ok and first["counts"]["downloaded"] == 6 and first["counts"]["failed"] == 1
    assert again["up_to_date"] == 6


@pytest.mark.integration
@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell script stands in for the luigid console script")
def test_luigid_entry_point_serves_the_job_with_the_patch(site, tmp_path, monkeypatch):
    from tests import luigid_support

    publish(site, failing=False)
    script = tmp_path / "patched-luigid"
    script.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m pipeline.scheduler_speedups luigid "$@"\n', encoding="utf-8"
    )
    script.chmod(0o755)
    real = luigid_support.console_script
    monkeypatch.setattr(luigid_support, "console_script", lambda name: str(script) if name == "luigid" else real(name))
    with luigid_support.Luigid(tmp_path / "luigid") as central:
        client = tmp_path / "client"
        client.mkdir()
        config = client / "luigi.cfg"
        config.write_text(luigid_support.client_cfg(site, tmp_path / "data"), encoding="utf-8")
        proc, log = luigid_support.start_client(
            luigid_support.luigi_command(
                "--workers",
                "3",
                "--run-id",
                "central1",
                "--scheduler-host",
                "127.0.0.1",
                "--scheduler-port",
                str(central.port),
            ),
            config,
            client,
            "client.log",
        )
        assert luigid_support.finish(proc) == 0, log.read_text(encoding="utf-8", errors="replace")
        families = central.families(DONE)
        output = central.output()
    assert "scheduler speedups applied (luigi 3.8.1)" in output
    assert "RuntimeWarning" not in output
    assert families["DownloadCsv"] == 6 and families["NormalizeCsv"] == 6
    assert query(tmp_path / "data", "SELECT status FROM runs") == [("succeeded",)]


def test_entry_point_without_luigid_prints_usage():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.scheduler_speedups"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 2
    assert "usage: python -m pipeline.scheduler_speedups luigid" in result.stderr
    assert "RuntimeWarning" not in result.stderr


def test_a_scheduler_with_an_index_pickles_as_luigis_does(clock):
    """Under the spawn start method Luigi pickles each task process, and with it the local scheduler."""
    import pickle

    sch = Scheduler(resources={"r": 1}, record_task_history=False)
    sch.add_task(worker="w", task_id="a", resources={"r": 1})
    sch.add_task(worker="w", task_id="b", deps=["a"])
    assert sch.get_work(worker="w")["task_id"] == "a"
    assert scheduler_speedups._live_index(sch._state) is not None
    copy = pickle.loads(pickle.dumps(sch))
    assert scheduler_speedups._live_index(copy._state) is None  # built again on first use
    copy.add_task(worker="w", task_id="a", status=DONE)
    assert copy.get_work(worker="w", current_tasks=[])["task_id"] == "b"
    assert sch.get_work(worker="w", current_tasks=["a"])["task_id"] is None


def test_state_classes_are_luigis(clock):
    sch = Scheduler(resources={}, record_task_history=False)
    sch.add_task(worker="w", task_id="x")
    sch.get_work(worker="w")
    assert type(sch._state) is SimpleTaskState
    assert scheduler_speedups._live_index(sch._state) is not None
