"""Luigi 3.8.1's scheduler without a pass over every task on every get_work; the same answers, only faster.

Why
---
Luigi's ``Scheduler`` (the local one that ``luigi --local-scheduler`` builds, and the one inside ``luigid``) does
work proportional to the number of tasks it knows on every ``get_work`` call:

* the local scheduler prunes on every call (``interface._WorkerSchedulerFactory.create_local_scheduler`` passes
  ``prune_on_get_work=True``), and ``prune`` visits every task twice: ``_prune_workers`` ends in
  ``SimpleTaskState._remove_workers_from_tasks`` even when no worker is to be removed, then ``_prune_tasks``
  calls three methods on every task, although only tasks that are RUNNING, BATCH_RUNNING, FAILED or DISABLED,
  have no stakeholder, or are marked for removal can be changed by them;
* ``get_work`` sorts every PENDING and RUNNING task with a Python key, then keeps looping after it has chosen
  one, although only RUNNING tasks and PENDING tasks whose dependencies are all DONE can affect its answer;
* ``count_pending`` (called by ``get_work``) runs ``_upstream_status`` for every pending task of the worker to
  leave out those below a DISABLED task, although only tasks that depend on a DISABLED one can be left out;
* ``Worker.is_trivial_worker`` walks the worker's pending tasks until one needs a resource.

A worker calls ``get_work`` about 1.6 times per task, so a run is quadratic in its tasks: with 4,000 tasks
(2,000 datasets) a call costs tens of milliseconds. A second cost hides behind the first: a worker with more
than one process forks one per task, and after each fork the first write to every page shared with a live child
copies that page; a pass that touches every task object is paid again in page faults after every fork.

What
----
The replaced functions keep the originals' contracts and answers (same task chosen, same counts, same state
changes, in the same order) and differ only in what they look at:

* ``Scheduler.get_work`` runs Luigi's loop body (the 3.8.1 code) over the tasks in the order Luigi's sort puts
  them (priority, then age, then the position in the PENDING or RUNNING dict: the ties Python's stable sort
  keeps), but only over those that can change its answer: RUNNING tasks, and PENDING tasks whose dependencies are
  all DONE, kept in one heap per set of resources. It stops once the answer is settled (a task chosen, its batch
  full), and leaves a heap once no task in it can be chosen or reserve greedy resources any more. A call it
  cannot answer that way both exactly and cheaply (a rank tie for a worker whose tasks Luigi reads from its
  ``Worker.tasks`` set, more of other workers' tasks to skip than Luigi would have sorted, a priority that is not
  a plain number) runs Luigi's own sort and loop.
* ``Scheduler.count_pending`` reads per-worker counters of PENDING and FAILED tasks (kept as statuses and task
  workers change), less the PENDING tasks that have a DISABLED task upstream through PENDING tasks (what
  ``_upstream_status`` reports as UPSTREAM_DISABLED), found from the DISABLED tasks through their dependents;
  if those form a cycle (where ``_upstream_status``'s answer depends on its visiting order) it calls the original.
* ``Scheduler._prune_tasks`` visits, in the state's task order, only the tasks the three rules can act on;
  ``SimpleTaskState._remove_workers_from_tasks`` returns at once when there is no worker to remove.
* ``Worker.is_trivial_worker`` is answered from the set of PENDING tasks that need resources.

To keep the heaps and counters right, ``SimpleTaskState.get_task`` (when it creates a task), ``set_status``,
``update_status``, ``inactivate_tasks``, ``_remove_workers_from_tasks``, ``load``, ``set_state`` and
``Scheduler.add_task``, ``_update_priority`` call the original and then update the index; every status,
dependency, priority, resource and worker change of Luigi 3.8.1 goes through them. The index is built on first
use from the state as it is, dropped on ``load``, and kept beside the state rather than in it, so pickling a
state (luigid's state file, task processes under the spawn start method) never carries it. If a state or
scheduler class overrides a method the index relies on, or if anything unexpected happens while updating it,
that state falls back to the original functions for good (logged as a warning).

So a call costs about the number of running tasks plus the tasks it can act on, instead of every task; keeping
the index costs O(1) per status change (O(dependents) when a task becomes or stops being DONE) and
O(dependencies) per ``add_task`` (which is itself O(dependencies)).
A worker whose ``Worker.tasks`` still holds tasks that ``prune`` removed (Luigi keeps them there, and counts or
even picks them) gets Luigi's own code.

Scope
-----
``apply()`` patches only when ``luigi.__version__ == "3.8.1"`` (the code mirrors that release; for any other
version it does nothing and logs so at debug level) and unless ``PIPELINE_SCHEDULER_SPEEDUPS=0`` is set.
pipeline/__init__.py applies it on import, so ``luigi --module pipeline ...`` runs with it. For the central
scheduler: ``python -m pipeline.scheduler_speedups luigid [luigid arguments]`` applies it, then runs
``luigi.cmdline.luigid``.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import heapq
import itertools
import logging
import os
import sys
import time
import warnings
import weakref

import luigi
from luigi import scheduler as _scheduler
from luigi.scheduler import BATCH_RUNNING, DISABLED, DONE, FAILED, PENDING, RUNNING, Scheduler, SimpleTaskState

logger = logging.getLogger(__name__)

SUPPORTED_VERSION = "3.8.1"
SWITCH = "PIPELINE_SCHEDULER_SPEEDUPS"  # "0", "false", "no" or "off": leave Luigi as it is

# `python -m pipeline.scheduler_speedups` runs this file after pipeline/__init__.py has imported it; runpy's warning
# about that is about this very situation, which is harmless here (__main__ hands over to the imported module).
warnings.filterwarnings(
    "ignore", message=r"'pipeline\.scheduler_speedups' found in sys\.modules", category=RuntimeWarning
)

# SimpleTaskState -> its _TaskIndex, or False once it uses the original functions for good. Kept beside the state,
# not in it: a state is pickled (luigid's state file; every task process under the spawn start method).
_INDEXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ORIGINALS: dict[tuple[type, str], object] = {}
_PRUNABLE = (RUNNING, BATCH_RUNNING, FAILED, DISABLED)  # prune may change such a task whatever else holds
_RUNNING_STREAM = object()
# get_work's answer depends on these; a subclass overriding one gets the original functions.
_RELIED_ON = ("_rank", "_schedulable", "_has_resources", "_used_resources", "_update_priority", "add_task")


def _original(cls: type, name: str):
    return _ORIGINALS[(cls, name)]


def _orderable(value) -> bool:
    return isinstance(value, (int, float)) and value == value  # NaN sorts inconsistently


def _signature(resources):
    return None if resources is None else tuple(sorted(resources.items()))


def _guarded(method):
    """An index update that fails leaves its state to the original functions instead of breaking the scheduler."""

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except Exception:
            logger.warning(
                "Scheduler speedups: unexpected state, using Luigi's own scheduler code from now on", exc_info=True
            )
            _INDEXES[self.state] = False
            return None

    return wrapper


class _TaskIndex:
    """What get_work, count_pending and prune need of one SimpleTaskState, kept current by the hooks below."""

    def __init__(self, state: SimpleTaskState):
        self.state = state
        self.positions = itertools.count()  # order of insertion into state._tasks: prune's order
        self.pos: dict[str, int] = {}
        self.sequence = itertools.count()  # order of insertion into the PENDING dict: the order of rank ties
        self.seq: dict[str, int] = {}
        self.dependents: dict[str, set] = collections.defaultdict(set)  # id -> ids of tasks listing it in deps
        self.undone: dict[str, int] = {}  # id -> how many of its deps are missing or not DONE
        self.entries = itertools.count()
        self.live: dict[str, tuple] = {}  # id of a PENDING task with every dep DONE -> (entry, signature, key)
        self.buckets: dict = {}  # resource signature -> heap of (-priority, time, 0, seq, entry, id)
        self.bucket_resources: dict = {}  # signature -> the resources dict it stands for
        self.garbage = 0  # heap entries no longer in self.live
        self.ordered = True  # False once a ready task has a priority or time that cannot be a heap key
        self.watch: set = set()  # ids of tasks without stakeholders or marked for removal
        self.counted: dict[str, tuple] = {}  # id of a PENDING or FAILED task -> its workers, as counted
        self.counts: dict[str, list] = collections.defaultdict(lambda: [0, 0, 0])  # pending, unique, last
        self.pending_resources: dict = {}  # id -> PENDING task that needs resources
        self.stale_workers: set = set()  # workers whose Worker.tasks holds tasks no longer in the state
        tasks = state._tasks
        for task_id in tasks:
            self.pos[task_id] = next(self.positions)
        for task_id in state._status_tasks[PENDING]:
            self.seq[task_id] = next(self.sequence)
        for task in tasks.values():
            for dep in task.deps:
                self.dependents[dep].add(task.id)
        for task in tasks.values():
            self.undone[task.id] = self._count_undone(task)
            self._refresh(task)

    # -- the views ---------------------------------------------------------------------------------------------

    def _count_undone(self, task) -> int:
        tasks = self.state._tasks
        return sum(1 for dep in task.deps if (found := tasks.get(dep)) is None or found.status != DONE)

    def _refresh(self, task) -> None:
        self._ready(task)
        self._watch(task)
        self._recount(task)
        self._needs_resources(task)

    def _ready(self, task) -> None:
        """Keep one live heap entry for a PENDING task whose deps are all DONE, under its current key."""
        task_id = task.id
        if task.status != PENDING or self.undone.get(task_id, 1):
            self._drop(task_id)
            return
        if not (_orderable(task.priority) and _orderable(task.time)):
            self.ordered = False
            return
        key = (-task.priority, task.time, 0, self.seq[task_id])
        signature = _signature(task.resources)
        live = self.live.get(task_id)
        if live is not None:
            if live[1] == signature and live[2] == key:
                return
            self.garbage += 1
        heap = self.buckets.get(signature)
        if heap is None:
            if signature and not all(_orderable(n) and n >= 0 for _, n in signature):
                self.ordered = False  # a negative amount would make greedy reservations shrink
                return
            heap = self.buckets[signature] = []
            self.bucket_resources[signature] = None if signature is None else dict(signature)
        entry = next(self.entries)
        self.live[task_id] = (entry, signature, key)
        heapq.heappush(heap, (*key, entry, task_id))

    def _drop(self, task_id) -> None:
        if self.live.pop(task_id, None) is not None:
            self.garbage += 1

    def _watch(self, task) -> None:
        if not task.stakeholders or task.remove is not None:
            self.watch.add(task.id)
        else:
            self.watch.discard(task.id)

    def _recount(self, task) -> None:
        old = self.counted.pop(task.id, None)
        if old:
            self._count(old, -1)
        if task.status in (PENDING, FAILED) and task.workers:
            new = tuple(task.workers)
            self.counted[task.id] = new
            self._count(new, 1)

    def _count(self, workers: tuple, sign: int) -> None:
        unique = sign if len(workers) == 1 else 0
        for worker_id in workers:
            counts = self.counts[worker_id]
            counts[0] += sign
            counts[1] += unique
        self.counts[workers[-1]][2] += sign

    def _needs_resources(self, task) -> None:
        if task.status == PENDING and task.resources:
            self.pending_resources[task.id] = task
        else:
            self.pending_resources.pop(task.id, None)

    def _dep_changed(self, dep_id, done: bool) -> None:
        tasks = self.state._tasks
        for task_id in self.dependents.get(dep_id, ()):
            task = tasks.get(task_id)
            if task is None or dep_id not in task.deps:
                continue
            if done:
                self.undone[task_id] -= 1
                if not self.undone[task_id]:
                    self._ready(task)
            else:
                self.undone[task_id] += 1
                self._drop(task_id)

    def below_disabled(self) -> set | None:
        """The PENDING tasks _upstream_status reports as UPSTREAM_DISABLED: those with a DISABLED task upstream
        through PENDING tasks (its depth-first walk expands PENDING tasks only, and DISABLED is the most severe).
        None if they form a cycle: there the walk's memo makes its answer depend on the order it visits them."""
        tasks = self.state._tasks
        below: set = set()
        todo = list(self.state._status_tasks[DISABLED])
        while todo:
            dep_id = todo.pop()
            for task_id in self.dependents.get(dep_id, ()):
                task = tasks.get(task_id)
                if task_id not in below and task is not None and task.status == PENDING and dep_id in task.deps:
                    below.add(task_id)
                    todo.append(task_id)
        done: set = set()  # depth-first over dependents within `below`, looking for a back edge
        for start in below:
            if start in done:
                continue
            path, stack = {start}, [(start, iter(self.dependents.get(start, ())))]
            while stack:
                node, following = stack[-1]
                for task_id in following:
                    if task_id in below and node in tasks[task_id].deps:
                        if task_id in path:
                            return None
                        if task_id not in done:
                            path.add(task_id)
                            stack.append((task_id, iter(self.dependents.get(task_id, ()))))
                            break
                else:
                    stack.pop()
                    path.discard(node)
                    done.add(node)
        return below

    def valid(self, entry) -> bool:
        live = self.live.get(entry[-1])
        return live is not None and live[0] == entry[-2]

    def tidy(self) -> None:
        """Drop dead entries from the heaps' tops, and rebuild the heaps when dead entries outnumber live ones."""
        if self.garbage > 256 and self.garbage > len(self.live):
            buckets: dict = {signature: [] for signature in self.buckets}
            for task_id, (entry, signature, key) in self.live.items():
                buckets[signature].append((*key, entry, task_id))
            for heap in buckets.values():
                heapq.heapify(heap)
            self.buckets, self.garbage = buckets, 0
        for heap in self.buckets.values():
            while heap and not self.valid(heap[0]):
                heapq.heappop(heap)
                self.garbage -= 1

    # -- hooks: called after the original function changed the state ------------------------------------------

    @_guarded
    def on_new(self, task) -> None:
        task_id = task.id
        if self.state._tasks.get(task_id) is not task:
            raise ValueError(f"task {task_id!r} was stored under another id")
        self.pos[task_id] = next(self.positions)
        if task.status == PENDING:
            self.seq[task_id] = next(self.sequence)
        for dep in task.deps:
            self.dependents[dep].add(task_id)
        self.undone[task_id] = self._count_undone(task)
        if task.status == DONE:
            self._dep_changed(task_id, True)
        self._refresh(task)

    @_guarded
    def on_status(self, task, old: str) -> None:
        if self.state._tasks.get(task.id) is not task:
            return
        new = task.status
        if new != old:
            if new == PENDING:
                self.seq[task.id] = next(self.sequence)
            elif old == PENDING:
                self.seq.pop(task.id, None)
            if (new == DONE) != (old == DONE):
                self._dep_changed(task.id, new == DONE)
            self._ready(task)
            self._recount(task)
            self._needs_resources(task)
        self._watch(task)

    @_guarded
    def on_watched_change(self, task) -> None:
        if self.state._tasks.get(task.id) is task:
            self._watch(task)

    @_guarded
    def on_priority(self, task) -> None:
        if self.state._tasks.get(task.id) is task:
            self._ready(task)

    @_guarded
    def after_add_task(self, task_id) -> None:
        tasks = self.state._tasks
        task = tasks.get(task_id)
        if task is None:
            return
        for dep in task.deps:
            self.dependents[dep].add(task.id)
        self.undone[task.id] = self._count_undone(task)
        self._refresh(task)
        for dep in task.deps:  # add_task makes the worker a stakeholder of every dependency
            found = tasks.get(dep)
            if found is not None:
                self._watch(found)

    @_guarded
    def on_removed(self, removed: list) -> None:
        workers = self.state._active_workers
        for task in removed:
            task_id = task.id
            for table in (self.pos, self.seq, self.undone, self.pending_resources):
                table.pop(task_id, None)
            self._drop(task_id)
            self.watch.discard(task_id)
            old = self.counted.pop(task_id, None)
            if old:
                self._count(old, -1)
            if task.status == DONE:
                self._dep_changed(task_id, False)  # a missing dependency is not DONE
            for worker_id in task.workers:
                worker = workers.get(worker_id)
                if worker is not None and task in worker.tasks:
                    self.stale_workers.add(worker_id)

    @_guarded
    def on_workers_changed(self) -> None:
        tasks = self.state._tasks.values()
        self.watch = {task.id for task in tasks if not task.stakeholders or task.remove is not None}
        self.counted.clear()
        self.counts.clear()
        for task in tasks:
            self._recount(task)


def _live_index(state) -> _TaskIndex | None:
    index = _INDEXES.get(state)
    return index if index.__class__ is _TaskIndex else None


def _index(sch: Scheduler) -> _TaskIndex | None:
    """The scheduler's index, built on first use; None when this scheduler must use the original functions."""
    state = sch._state
    index = _INDEXES.get(state)
    if index is None:
        cls = type(sch)
        if type(state) is not SimpleTaskState or any(
            getattr(cls, name) is not getattr(Scheduler, name) for name in _RELIED_ON
        ):
            logger.debug("Scheduler speedups: %s or its state overrides a method they rely on; not used", cls)
            _INDEXES[state] = False
            return None
        try:
            index = _TaskIndex(state)
        except Exception:
            logger.warning(
                "Scheduler speedups: cannot index the scheduler state; using Luigi's own code", exc_info=True
            )
            _INDEXES[state] = False
            return None
        _INDEXES[state] = index
    return index if index.__class__ is _TaskIndex else None


# -- get_work ---------------------------------------------------------------------------------------------------


class _Search:
    """The body of Luigi 3.8.1's get_work loop, one task at a time, with what it accumulates."""

    def __init__(self, sch: Scheduler, worker_id, assistant, used_resources, greedy_workers):
        self.sch, self.worker_id, self.assistant = sch, worker_id, assistant
        self.used_resources, self.greedy_workers = used_resources, greedy_workers
        self.greedy_resources: collections.defaultdict = collections.defaultdict(int)
        self.free_workers = sum(1 for count in greedy_workers.values() if count > 0)
        self.best = None
        self.batched_params: dict | None = None
        self.unbatched_params: dict | None = None
        self.batched_tasks: list = []
        self.max_batch_size = 1

    @property
    def batching(self) -> bool:
        return bool(self.best and self.batched_params and len(self.batched_tasks) < self.max_batch_size)

    @property
    def done(self) -> bool:
        """Nothing later in the order can change the answer."""
        return self.best is not None and not self.batching

    def dead(self, resources) -> bool:
        """No task needing `resources` can be chosen or reserve greedy resources any more in this call."""
        has = self.sch._has_resources
        return not has(resources, self.greedy_resources) or (
            self.free_workers <= 0 and not has(resources, self.used_resources)
        )

    def would_choose(self, task) -> bool:
        """Whether the loop would choose `task` if it came next (before any task was chosen)."""
        has = self.sch._has_resources
        return (
            self.sch._schedulable(task)
            and has(task.resources, self.greedy_resources)
            and ((self.assistant and task.runnable) or self.worker_id in task.workers)
            and has(task.resources, self.used_resources)
        )

    def _use_worker(self, worker_id) -> None:
        count = self.greedy_workers[worker_id]
        self.greedy_workers[worker_id] = count - 1
        if count > 0 >= count - 1:
            self.free_workers -= 1

    def visit(self, task) -> None:
        sch, best = self.sch, self.best
        if (
            best
            and self.batched_params
            and task.family == best.family
            and len(self.batched_tasks) < self.max_batch_size
            and task.is_batchable()
            and all(task.params.get(name) == value for name, value in self.unbatched_params.items())
            and task.resources == best.resources
            and sch._schedulable(task)
        ):
            for name, params in self.batched_params.items():
                params.append(task.params.get(name))
            self.batched_tasks.append(task)
        if best:
            return

        if task.status == RUNNING and (task.worker_running in self.greedy_workers):
            self._use_worker(task.worker_running)
            for resource, amount in (getattr(task, "resources_running", task.resources) or {}).items():
                self.greedy_resources[resource] += amount

        if sch._schedulable(task) and sch._has_resources(task.resources, self.greedy_resources):
            in_workers = (self.assistant and task.runnable) or self.worker_id in task.workers
            if in_workers and sch._has_resources(task.resources, self.used_resources):
                self.best = task
                batch_param_names, self.max_batch_size = sch._state.get_batcher(self.worker_id, task.family)
                if batch_param_names and task.is_batchable():
                    try:
                        self.batched_params = {name: [task.params[name]] for name in batch_param_names}
                        self.unbatched_params = {
                            name: value for name, value in task.params.items() if name not in self.batched_params
                        }
                        self.batched_tasks.append(task)
                    except KeyError:
                        self.batched_params, self.unbatched_params = None, None
            else:
                workers = itertools.chain(task.workers, [self.worker_id]) if self.assistant else task.workers
                for task_worker in workers:
                    if self.greedy_workers.get(task_worker, 0) > 0:
                        self._use_worker(task_worker)
                        for resource, amount in (task.resources or {}).items():
                            self.greedy_resources[resource] += amount
                        break


def _greedy_setup(sch: Scheduler):
    used_resources = sch._used_resources()
    activity_limit = time.time() - sch._config.worker_disconnect_delay
    active_workers = sch._state.get_active_workers(last_get_work_gt=activity_limit)
    return used_resources, {worker.id: worker.info.get("workers", 1) for worker in active_workers}


def _sorted_search(sch: Scheduler, worker, worker_id, assistant) -> _Search:
    """Luigi 3.8.1's choice of relevant tasks, its sort, and its loop (stopping once nothing can change)."""
    state = sch._state
    if worker.is_trivial_worker(state):
        relevant_tasks = worker.get_tasks(state, PENDING, RUNNING)
        used_resources, greedy_workers = collections.defaultdict(int), {}
    else:
        relevant_tasks = state.get_active_tasks_by_status(PENDING, RUNNING)
        used_resources, greedy_workers = _greedy_setup(sch)
    tasks = list(relevant_tasks)
    tasks.sort(key=sch._rank, reverse=True)
    search = _Search(sch, worker_id, assistant, used_resources, greedy_workers)
    for task in tasks:
        search.visit(task)
        if search.done:
            break
    return search


def _heap_order(heap: list, valid):
    """The valid entries of a binary heap in sorted order, without changing the heap."""
    frontier = [(heap[0], 0)]
    size = len(heap)
    while frontier:
        entry, i = heapq.heappop(frontier)
        child = 2 * i + 1
        if child < size:
            heapq.heappush(frontier, (heap[child], child))
            if child + 1 < size:
                heapq.heappush(frontier, (heap[child + 1], child + 1))
        if valid(entry):
            yield entry


def _indexed_search(sch: Scheduler, index: _TaskIndex, worker, worker_id, assistant) -> _Search | None:
    """The same answer as _sorted_search from the index, or None when it cannot be sure of it cheaply."""
    state = sch._state
    if worker.assistant:
        trivial = False
    else:
        trivial = not any(worker_id in task.workers for task in index.pending_resources.values())
    if trivial:
        used_resources, greedy_workers = collections.defaultdict(int), {}
    else:
        used_resources, greedy_workers = _greedy_setup(sch)
    search = _Search(sch, worker_id, assistant, used_resources, greedy_workers)

    index.tidy()
    heads, streams = [], {}
    for signature, heap in index.buckets.items():
        if heap:
            stream = _heap_order(heap, index.valid)
            first = next(stream, None)
            if first is not None:
                streams[signature] = stream
                heads.append((first, signature))
    if not trivial:  # a trivial worker's loop does nothing with RUNNING tasks (no greedy workers)
        running = list(state._status_tasks[RUNNING].values())
        if not all(_orderable(task.priority) and _orderable(task.time) for task in running):
            return None
        for task in running:
            resources = getattr(task, "resources_running", task.resources) or {}
            if not all(_orderable(amount) and amount >= 0 for amount in resources.values()):
                return None
        running.sort(key=lambda task: (-task.priority, task.time))
        entries = [(-task.priority, task.time, 1, i, task) for i, task in enumerate(running)]
        if entries:
            streams[_RUNNING_STREAM] = iter(entries[1:])
            heads.append((entries[0], _RUNNING_STREAM))
    heapq.heapify(heads)

    # Luigi takes a trivial worker's tasks from the Worker.tasks set when it is the smaller: ties in rank then
    # come in set order, so a tie between two tasks it could choose is left to Luigi's own loop.
    set_order = trivial and len(worker.tasks) < len(state._status_tasks[PENDING]) + len(state._status_tasks[RUNNING])
    budget = min(len(worker.tasks), len(state._status_tasks[PENDING]) + len(state._status_tasks[RUNNING])) + 64
    tasks = state._tasks
    best_signature = None
    while heads:
        entry, stream_key = heads[0]
        if search.best is not None:
            if stream_key is _RUNNING_STREAM or stream_key != best_signature:
                heapq.heappop(heads)  # only tasks with the chosen task's resources can join its batch
                continue
        elif stream_key is not _RUNNING_STREAM and search.dead(index.bucket_resources[stream_key]):
            heapq.heappop(heads)  # no task left in this resource set can change the answer
            continue
        following = next(streams[stream_key], None)
        if following is None:
            heapq.heappop(heads)
        else:
            heapq.heapreplace(heads, (following, stream_key))
        if stream_key is _RUNNING_STREAM:
            search.visit(entry[-1])
            continue
        task = tasks[entry[-1]]
        if not sch._schedulable(task):
            index._drop(task.id)  # the loop would pass it by; it is indexed again when it becomes ready
            continue
        if trivial:
            budget -= 1
            if budget < 0:
                return None  # Luigi's own loop over the worker's tasks is cheaper than skipping other workers'
        search.visit(task)
        if search.best is task:
            best_signature = stream_key
            if set_order and (search.batching or _tie_choosable(search, heads, streams, tasks, entry)):
                return None
        if search.done:
            break
    return search


def _tie_choosable(search: _Search, heads, streams, tasks, chosen) -> bool:
    """Whether a task after `chosen` in the index has the same rank and could have been chosen instead."""
    rank = chosen[:2]
    while heads and heads[0][0][:2] == rank:
        entry, stream_key = heapq.heappop(heads)
        following = next(streams[stream_key], None)
        if following is not None:
            heapq.heappush(heads, (following, stream_key))
        if stream_key is not _RUNNING_STREAM and search.would_choose(tasks[entry[-1]]):
            return True
    return False


@functools.wraps(Scheduler.get_work)
def get_work(self, host=None, assistant=False, current_tasks=None, worker=None, **kwargs):
    index = _index(self)
    if index is None:
        return _original(Scheduler, "get_work")(
            self, host=host, assistant=assistant, current_tasks=current_tasks, worker=worker, **kwargs
        )
    # From here to the search: Luigi 3.8.1's get_work.
    if self._config.prune_on_get_work:
        self.prune()

    assert worker is not None
    worker_id = worker
    worker = self._update_worker(worker_id, worker_reference={"host": host}, get_work=True)
    if not worker.enabled:
        reply = {
            "n_pending_tasks": 0,
            "running_tasks": [],
            "task_id": None,
            "n_unique_pending": 0,
            "worker_state": worker.state,
        }
        return reply

    if assistant:
        self.add_worker(worker_id, [("assistant", assistant)])

    best_task = None
    if current_tasks is not None:
        ct_set = set(current_tasks)
        for task in sorted(self._state.get_active_tasks_by_status(RUNNING), key=self._rank):
            if task.worker_running == worker_id and task.id not in ct_set:
                best_task = task

    if current_tasks is not None:
        # batch running tasks that weren't claimed since the last get_work go back in the pool
        self._reset_orphaned_batch_running_tasks(worker_id)

    worker = self._state.get_worker(worker_id)
    search = None
    if best_task is None and not self._paused:  # else Luigi's loop changes nothing
        index = _live_index(self._state)  # prune may have switched this state to the originals
        if index is not None and index.ordered and worker_id not in index.stale_workers:
            try:
                search = _indexed_search(self, index, worker, worker_id, assistant)
            except Exception:  # it changes no state: Luigi's own loop can still answer
                logger.warning(
                    "Scheduler speedups: get_work failed on the index; using Luigi's own code from now on",
                    exc_info=True,
                )
                _INDEXES[self._state] = False
        if search is None:
            search = _sorted_search(self, worker, worker_id, assistant)
        best_task = search.best
    batched_params, batched_tasks = (search.batched_params, search.batched_tasks) if search else (None, [])

    # From here on: Luigi 3.8.1's get_work.
    reply = self.count_pending(worker_id)

    if len(batched_tasks) > 1:
        batch_string = "|".join(task.id for task in batched_tasks)
        batch_id = hashlib.new("md5", batch_string.encode("utf-8"), usedforsecurity=False).hexdigest()
        for task in batched_tasks:
            self._state.set_batch_running(task, batch_id, worker_id)

        combined_params = best_task.params.copy()
        combined_params.update(batched_params)

        reply["task_id"] = None
        reply["task_family"] = best_task.family
        reply["task_module"] = getattr(best_task, "module", None)
        reply["task_params"] = combined_params
        reply["batch_id"] = batch_id
        reply["batch_task_ids"] = [task.id for task in batched_tasks]

    elif best_task:
        self.update_metrics_task_started(best_task)
        self._state.set_status(best_task, RUNNING, self._config)
        best_task.worker_running = worker_id
        best_task.resources_running = best_task.resources.copy()
        best_task.time_running = time.time()
        self._update_task_history(best_task, RUNNING, host=host)

        reply["task_id"] = best_task.id
        reply["task_family"] = best_task.family
        reply["task_module"] = getattr(best_task, "module", None)
        reply["task_params"] = best_task.params

    else:
        reply["task_id"] = None

    return reply


# -- count_pending, prune ---------------------------------------------------------------------------------------


@functools.wraps(Scheduler.count_pending)
def count_pending(self, worker):
    index = _index(self)
    state = self._state
    below = set()
    if index is not None and state._status_tasks[DISABLED]:
        try:
            below = index.below_disabled()
        except Exception:  # it changes nothing: Luigi's own count can still answer
            logger.warning("Scheduler speedups: count_pending failed on the index", exc_info=True)
            below = None
    if index is None or below is None or worker in index.stale_workers:
        # Luigi counts the stale tasks of Worker.tasks; below a cycle its _upstream_status depends on order.
        return _original(Scheduler, "count_pending")(self, worker)
    worker_id, worker = worker, state.get_worker(worker)
    running_tasks = []
    for task in worker.get_tasks(state, RUNNING):
        # Return a list of currently running tasks to the client, makes it easier to troubleshoot
        other_worker = state.get_worker(task.worker_running)
        if other_worker is not None:
            more_info = {"task_id": task.id, "worker": str(other_worker)}
            more_info.update(other_worker.info)
            running_tasks.append(more_info)
    num_pending, num_unique_pending, num_pending_last_scheduled = index.counts.get(worker_id, (0, 0, 0))
    for task_id in below:  # pending tasks Luigi leaves out, as RUNNING ones never are (their status is theirs)
        workers = index.counted.get(task_id, ())
        if worker_id in workers:
            num_pending -= 1
            num_unique_pending -= len(workers) == 1
            num_pending_last_scheduled -= workers[-1] == worker_id
    return {
        "n_pending_tasks": num_pending,
        "n_unique_pending": num_unique_pending,
        "n_pending_last_scheduled": num_pending_last_scheduled,
        "worker_state": worker.state,
        "running_tasks": running_tasks,
    }


@functools.wraps(Scheduler._prune_tasks)
def _prune_tasks(self):
    index = _index(self)
    if index is None:
        return _original(Scheduler, "_prune_tasks")(self)
    state = self._state
    assistant_ids = {w.id for w in state.get_assistants()}
    remove_tasks = []
    # Any other task is PENDING, DONE or UNKNOWN with a stakeholder and no removal time: the three calls below
    # leave it as it is. The ones that may change are visited in the order Luigi visits every task.
    candidates = set(index.watch)
    for status in _PRUNABLE:
        candidates.update(state._status_tasks[status])
    pos, tasks = index.pos, state._tasks
    for _, task_id in sorted((pos[task_id], task_id) for task_id in candidates if task_id in pos and task_id in tasks):
        task = tasks[task_id]
        state.fail_dead_worker_task(task, self._config, assistant_ids)
        state.update_status(task, self._config)
        if state.may_prune(task):
            _scheduler.logger.info("Removing task %r", task.id)
            remove_tasks.append(task.id)

    state.inactivate_tasks(remove_tasks)


# -- hooks on the state and on add_task -------------------------------------------------------------------------


@functools.wraps(Scheduler.add_task)
def add_task(self, *args, **kwargs):
    result = _original(Scheduler, "add_task")(self, *args, **kwargs)
    index = _live_index(self._state)
    if index is not None:
        index.after_add_task(kwargs["task_id"] if "task_id" in kwargs else args[0] if args else None)
    return result


@functools.wraps(Scheduler._update_priority)
def _update_priority(self, task, prio, worker):
    before = task.priority
    _original(Scheduler, "_update_priority")(self, task, prio, worker)  # recurses through this function
    if task.priority != before:
        index = _live_index(self._state)
        if index is not None:
            index.on_priority(task)


@functools.wraps(SimpleTaskState.get_task)
def get_task(self, task_id, default=None, setdefault=None):
    if not setdefault:
        return self._tasks.get(task_id, default)
    index = _live_index(self)
    if index is None or task_id in self._tasks:
        return _original(SimpleTaskState, "get_task")(self, task_id, default, setdefault)
    task = _original(SimpleTaskState, "get_task")(self, task_id, default, setdefault)
    index.on_new(task)
    return task


@functools.wraps(SimpleTaskState.set_status)
def set_status(self, task, new_status, config=None):
    index = _live_index(self)
    if index is None:
        return _original(SimpleTaskState, "set_status")(self, task, new_status, config)
    old = task.status
    try:
        return _original(SimpleTaskState, "set_status")(self, task, new_status, config)
    finally:
        index.on_status(task, old)


@functools.wraps(SimpleTaskState.update_status)
def update_status(self, task, config):
    _original(SimpleTaskState, "update_status")(self, task, config)  # status changes go through set_status
    index = _live_index(self)
    if index is not None:
        index.on_watched_change(task)


@functools.wraps(SimpleTaskState.inactivate_tasks)
def inactivate_tasks(self, delete_tasks):
    index = _live_index(self)
    if index is None:
        return _original(SimpleTaskState, "inactivate_tasks")(self, delete_tasks)
    delete_tasks = list(delete_tasks)
    found = [self._tasks.get(task_id) for task_id in delete_tasks]
    try:
        return _original(SimpleTaskState, "inactivate_tasks")(self, delete_tasks)
    finally:
        index.on_removed([task for task in found if task is not None and self._tasks.get(task.id) is not task])


@functools.wraps(SimpleTaskState._remove_workers_from_tasks)
def _remove_workers_from_tasks(self, workers, remove_stakeholders=True):
    if isinstance(workers, (list, tuple, set, frozenset, dict)) and not workers:
        return  # the original's loop would change nothing
    _original(SimpleTaskState, "_remove_workers_from_tasks")(self, workers, remove_stakeholders)
    index = _live_index(self)
    if index is not None:
        index.on_workers_changed()


def _dropping_index(name: str):
    @functools.wraps(getattr(SimpleTaskState, name))
    def replaced(self, *args, **kwargs):
        _INDEXES.pop(self, None)  # rebuilt from the new state on first use
        return _original(SimpleTaskState, name)(self, *args, **kwargs)

    return replaced


def _patches() -> list[tuple[type, str, object]]:
    return [
        (Scheduler, "get_work", get_work),
        (Scheduler, "count_pending", count_pending),
        (Scheduler, "_prune_tasks", _prune_tasks),
        (Scheduler, "add_task", add_task),
        (Scheduler, "_update_priority", _update_priority),
        (SimpleTaskState, "get_task", get_task),
        (SimpleTaskState, "set_status", set_status),
        (SimpleTaskState, "update_status", update_status),
        (SimpleTaskState, "inactivate_tasks", inactivate_tasks),
        (SimpleTaskState, "_remove_workers_from_tasks", _remove_workers_from_tasks),
        (SimpleTaskState, "load", _dropping_index("load")),
        (SimpleTaskState, "set_state", _dropping_index("set_state")),
    ]


# -- switching it on and off ------------------------------------------------------------------------------------


def is_applied() -> bool:
    return Scheduler.__dict__.get("get_work") is get_work


def apply() -> bool:
    """Patch Luigi's scheduler classes in place; True if they are patched now. Does nothing on another Luigi."""
    if is_applied():
        return True
    if luigi.__version__ != SUPPORTED_VERSION:
        logger.debug(
            "Scheduler speedups not applied: they are written for luigi %s, this is luigi %s",
            SUPPORTED_VERSION,
            luigi.__version__,
        )
        return False
    if os.environ.get(SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        logger.debug("Scheduler speedups not applied: %s=%s", SWITCH, os.environ[SWITCH])
        return False
    patches = _patches()
    for cls, name, _ in patches:
        _ORIGINALS[(cls, name)] = cls.__dict__[name]
    for cls, name, function in patches:
        setattr(cls, name, function)
    logger.debug("Scheduler speedups applied to luigi %s", luigi.__version__)
    return True


def revert() -> None:
    """Put Luigi's own functions back (and forget every index built meanwhile)."""
    if not is_applied():
        return
    for cls, name, _ in _patches():
        setattr(cls, name, _ORIGINALS[(cls, name)])
    _INDEXES.clear()


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.scheduler_speedups luigid [luigid arguments]`: luigid with the speedups applied."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "luigid":
        print("usage: python -m pipeline.scheduler_speedups luigid [luigid arguments]", file=sys.stderr)
        return 2
    import luigi.cmdline

    applied = apply()
    print(
        f"scheduler speedups {'applied' if applied else 'not applied'} (luigi {luigi.__version__})",
        file=sys.stderr,
        flush=True,
    )
    luigi.cmdline.luigid(argv[1:])
    return 0


if __name__ == "__main__":
    from pipeline import scheduler_speedups  # the module pipeline/__init__.py imported, not this __main__ copy

    sys.exit(scheduler_speedups.main())
