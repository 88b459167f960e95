"""The scheduler: a sans-I/O state machine shared by every Orion runtime.

Feed it events (``orion.scheduler.events``) with ``handle``; it returns the
commands (``orion.scheduler.commands``) its owner must carry out. It owns:

* the task table and each task's state:
  ``pending`` (waiting on inputs) -> ``ready`` (queued) -> ``running`` ->
  finished / failed / cancelled (then the record is dropped);
* dependency counting: each pending task counts its unready inputs and each
  pending object lists the tasks waiting on it, so a task becomes ready exactly
  when its last input does, without scanning other tasks;
* resource accounting per node (totals, free now) and per worker (idle, busy,
  blocked in ``get``);
* placement (``placement.py``), retries, failure propagation to dependents and
  cancellation; helping: a worker whose task waits in ``get`` runs the tasks
  it waits for itself (see "Helping"). Placement never scans the cluster:
  per demand shape it keeps an index of the nodes that can take such a task
  now (and of those that could, but lack an idle worker), and per shape and
  queue length one of the busy workers that can take one more task
  (pipelining), so a dispatch costs O(log nodes) however many nodes and
  queued tasks there are (see "Indexes");
* the object directory's view that placement needs: which nodes hold a copy
  of each large object (``ObjectLocated``), so a task goes where most of its
  input bytes already are, and what happens when every copy is gone
  (``ObjectLost``: its consumers wait while the owner re-runs the producer,
  or fail) or a worker cannot fetch an input (``InputLost``);
* recall (see "Recall"): tasks queued behind a task that runs long, while
  another worker sits idle, are asked back (``RecallTasks``).

It has no threads, sockets, clocks or pickles: owners call it from one thread
(or under one lock), which keeps it deterministic and unit-testable.
"""
from __future__ import annotations

from bisect import insort
from collections import deque
from heapq import heapify, heappop, heappush
from itertools import islice

from . import commands as cmd
from . import events as ev
from .events import Failure
from .placement import make_policy, most_local

PENDING = "pending"
READY = "ready"
RUNNING = "running"
ASSIGNED = "assigned"  # sent to a busy worker to run after its current task (pipelining)
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"

_EPSILON = 1e-9

# Pipelining: queue at most about this many seconds of expected work behind a
# busy worker (see Scheduler._pipeline_limit).
PIPELINE_BUDGET = 0.002
_UNKNOWN_RUN_TIME_LIMIT = 2
# Recall: a worker idle this long (seconds) with nothing to run has the tasks
# queued behind a task that ran all that time asked back (Scheduler "Recall").
RECALL_AFTER = 0.01
_RUN_TIME_WEIGHT = 0.2  # of the newest run in the moving average
_MAX_TRACKED_NAMES = 10_000  # task names with statistics (a bound for generated names)
_MAX_CACHED_SHAPES = 4_096  # demand dicts whose shape is remembered (see Scheduler._shape)
# Helping: how many tasks deep one worker may nest tasks run inside a waiting
# task's get (each level is a Python frame stack in the worker process).
MAX_NESTING = 32
HELP_WINDOW = 256  # of the tasks a waiting task waits for, how many are looked at to help
# Demand shapes whose placement index is kept up to date. Each one costs a
# little on every change of a node; programs use a handful of shapes, and the
# least recently used index beyond this many is dropped (and rebuilt by one
# scan of the nodes if its shape comes back).
MAX_PLACEMENT_INDEXES = 32


def fits(available, demand):
    """True when every amount in ``demand`` is on offer in ``available``."""
    for name, amount in demand.items():
        if available.get(name, 0.0) + _EPSILON < amount:
            return False
    return True


class _Task:
    __slots__ = ("spec", "state", "waiting", "worker_id", "attempt", "retries_left", "cancel_requested")

    def __init__(self, spec):
        self.spec = spec
        self.state = PENDING
        self.waiting = 0  # inputs not ready yet
        self.worker_id = None
        self.attempt = 0
        self.retries_left = spec.max_retries  # -1: retry for ever
        self.cancel_requested = False


class _Object:
    __slots__ = ("status", "failure", "dependents", "consumers", "release_requested", "locations", "size")

    def __init__(self):
        self.status = PENDING  # pending -> ready | failed; ready -> pending again when lost and rebuilt
        self.failure = None
        # Ids of pending tasks waiting for this object; None until the first
        # one (most results are only ever read by their owner): a million
        # queued tasks would otherwise hold a million empty lists.
        self.dependents = None
        self.consumers = 0  # unfinished tasks that take this object as input
        self.release_requested = False
        # Node ids holding a copy, in the order reported (a dict as an ordered
        # set). None until the first copy is reported: most objects are small
        # and never located, and they should not pay for an empty dict.
        self.locations = None
        self.size = 0  # bytes of one copy, as last reported


class _Node:
    __slots__ = ("node_id", "address", "total", "available", "base_workers", "workers", "idle",
                 "starting", "alive", "running", "blocked", "pipeline", "objects", "order", "version",
                 "dirty", "pipe_key", "open", "listing")

    def __init__(self, node_id, resources, base_workers, address, pipeline=False, order=0):
        self.node_id = node_id
        # Registration order (kept by a node that registers again, as its
        # place in Scheduler._nodes is): ties between nodes go to the lower.
        self.order = order
        self.version = -1  # stamp of the last time the indexes looked at it (see Scheduler._refresh)
        self.dirty = False  # changed since: queued in Scheduler._dirty_nodes
        # Pipelining index, node side (see "Indexes" in Scheduler): whether it
        # may take queued tasks now and its worker count, as last indexed; per
        # (shape, queued) a heap of its workers that could take one more; and
        # the stamp of its entry in Scheduler._open under each such key.
        self.pipe_key = None
        self.open = {} if pipeline else None
        self.listing = {} if pipeline else None
        self.address = address
        self.total = dict(resources)
        self.available = dict(resources)
        self.base_workers = base_workers
        # Worker ids in join order (a dict as an ordered set): iterating a set of
        # strings would depend on PYTHONHASHSEED, and so would pipelining's choice
        # of worker and the order a lost node's tasks are retried in.
        self.workers = {}
        self.idle = []  # idle worker ids, used as a stack (warm workers first)
        self.starting = base_workers  # workers the node is starting on its own
        self.alive = True
        self.running = 0
        self.blocked = 0  # workers whose task waits in get
        self.pipeline = pipeline
        # Ids of the objects located here: losing the node forgets exactly
        # these locations, without scanning every object.
        self.objects = set()

    def free_share(self):
        total = self.total.get("CPU", 0.0)
        if total <= 0:
            return float(len(self.idle))
        return self.available.get("CPU", 0.0) / total

    def acquire(self, demand):
        available = self.available
        for name, amount in demand.items():
            available[name] = available.get(name, 0.0) - amount

    def release(self, demand):
        available = self.available
        for name, amount in demand.items():
            available[name] = available.get(name, 0.0) + amount


class _Worker:
    __slots__ = ("worker_id", "node_id", "task_id", "queued", "blocked", "sent_back", "seq", "depth",
                 "version", "dirty", "waits", "suspended", "blocked_at", "moved_at", "idle_since", "recalled")

    def __init__(self, worker_id, node_id, seq=0, depth=0):
        self.worker_id = worker_id
        self.node_id = node_id
        self.seq = seq  # join order over all workers: within a node, the order of node.workers
        self.depth = depth  # its node's pipeline depth (0: no pipelining, so no index entries)
        self.version = -1  # stamp of its entry in the pipelining index; -1 once it is gone
        self.dirty = False
        self.task_id = None
        self.queued = []  # ASSIGNED tasks queued behind task_id, in order (pipelining)
        self.blocked = False
        self.blocked_at = 0.0  # when it last reported blocked (WorkerBlocked.at)
        # Recall: when it last started or ended a task (the scheduler's latest
        # time then), and when it went idle with nothing to run (None: not so).
        self.moved_at = 0.0
        self.idle_since = None
        self.recalled = None  # ids asked back and not answered yet (a set), or None
        # It sent a queued task back (TaskRejected): its task waits in get, maybe
        # not reported yet (the worker rejects just before it reports blocked).
        # Queue nothing behind it until it unblocks or its task ends.
        self.sent_back = False
        # Helping (see Scheduler): while blocked, the ids of the tasks its task
        # waits for; and the tasks suspended under the one it runs now, each
        # ``(task id, waits, queued)``, innermost last. They hold no resources.
        self.waits = ()
        self.suspended = None


class _Place:
    """The placement index of one demand shape (see "Indexes" in ``Scheduler``)."""

    __slots__ = ("demand", "candidates", "starters", "used")

    def __init__(self, demand, candidates):
        self.demand = demand
        self.candidates = candidates  # the policy's index of nodes that can run such a task now
        # (order, stamp, node) of the nodes alive with the demand free, no idle
        # worker and none starting: the first valid one gets a StartWorker.
        self.starters = []
        self.used = 0  # when a decision last needed it (least recently used goes first)


def _push(heap, entry, bound):
    """Push an index entry ``(..., stamp, node or worker)``; sweep out the
    entries whose stamp is stale once the heap holds more than ``bound``."""
    heappush(heap, entry)
    if len(heap) > bound:
        heap[:] = [e for e in heap if e[-1].version == e[-2]]
        heapify(heap)


def _registration_order(node):
    return node.order


class _Recall:
    """The scheduler's recall settings and state (see "Recall"), in one
    attribute: a Scheduler keeps under 30 instance attributes, past which
    CPython 3.11 stops sharing their keys and every ``self.x`` of its hot
    paths gets slower (measured: 0.7 µs a task more on a 1,000-worker drain)."""

    __slots__ = ("after", "idle", "timed")

    def __init__(self, after):
        self.after = after  # seconds idle before recalling; None: never
        self.idle = []  # heap of (due, worker id, idle since): idle workers that may recall
        self.timed = False  # a report came with its time (TaskFinished.at): recall can work


class Scheduler:
    """See the module docstring. ``policy`` names a placement policy."""

    @property
    def recall_after(self):
        return self._recalls.after

    def __init__(self, policy="least_loaded", adaptive_pipelining=False, extra_worker_delay=0.0,
                 recall_after=RECALL_AFTER):
        """``adaptive_pipelining``: size each pipeline by the task's name (see
        ``_pipeline_limit``); off, every pipelining node queues up to its depth.
        ``extra_worker_delay``: seconds a worker must have been blocked in get
        before its node asks for an extra worker for the resources it lent
        (see ``_may_grow``); 0: at once. ``recall_after``: seconds a worker
        sits idle before tasks queued behind a slow one are asked back (see
        "Recall"); None: never."""
        self.policy = make_policy(policy)
        self.adaptive_pipelining = adaptive_pipelining
        self.extra_worker_delay = extra_worker_delay
        self._recalls = _Recall(recall_after)
        self._shapes = {}  # id(demand dict) -> (the dict, its shape): see _shape
        self._now = 0.0  # the latest time an event brought (WorkerBlocked.at, Tick.now)
        self._young = []  # heap of (due, worker id, blocked at): blocked workers not lending yet
        self._tasks = {}
        self._objects = {}
        self._nodes = {}
        self._workers = {}
        # Ready tasks, one FIFO queue per resource shape (like Ray's scheduling
        # classes): a task that does not fit cannot block others of another shape.
        self._ready = {}
        self._feasibility = {}  # demand shape -> fits some live node (cleared on node changes)
        # Indexes (see "Indexes" below): nodes and workers changed since the
        # indexes last looked, one placement index per demand shape, and the
        # pipelining index: (shape, tasks queued) -> {node's worker count: heap}.
        self._dirty_nodes = []
        self._dirty_workers = []
        self._places = {}  # demand shape -> _Place
        self._open = {}
        self._open_levels = {}  # demand shape -> sorted queue lengths q with a key (shape, q) in _open
        # Worker count -> how many nodes of that many workers may take queued
        # tasks now (pipe_key (True, count)), and the smallest such count:
        # _pick_pipelined's early way out.
        self._pipe_sizes = {}
        self._fewest_pipe_workers = None
        self._stamp = 0  # source of unique, increasing stamps for index entries
        self._next_order = 0  # registration order of the next new node id
        self._next_seq = 0  # join order of the next worker
        self._max_depth = 0  # deepest pipeline of any node that joined
        self._run_times = {}  # task name -> average seconds a run takes (sizes pipelining)
        self._blocking_names = set()  # names of tasks seen waiting in get (never pipelined)
        # Objects with at least one known copy. While it is zero (no large
        # object anywhere) placement skips the locality look-up entirely.
        self._located = 0
        self._out = []
        self._handlers = {
            ev.TaskSubmitted: self._on_submitted,
            ev.ObjectPut: self._on_object_put,
            ev.TaskFinished: self._on_finished,
            ev.TaskErrored: self._on_errored,
            ev.NodeJoined: self._on_node_joined,
            ev.NodeLost: self._on_node_lost,
            ev.WorkerJoined: self._on_worker_joined,
            ev.WorkerLost: self._on_worker_lost,
            ev.WorkerBlocked: self._on_worker_blocked,
            ev.WorkerUnblocked: self._on_worker_unblocked,
            ev.Tick: self._on_tick,
            ev.CancelRequested: self._on_cancel,
            ev.TaskRejected: self._on_rejected,
            ev.ObjectsReleased: self._on_released,
            ev.ObjectLocated: self._on_object_located,
            ev.ObjectLost: self._on_object_lost,
            ev.InputLost: self._on_input_lost,
        }

    # ------------------------------------------------------------------ API
    def handle(self, event):
        """Apply one event; return the list of commands it caused."""
        self._handlers[type(event)](event)
        out, self._out = self._out, []
        return out

    def handle_all(self, events):
        """Apply several events in order; return all the commands they caused
        (each event schedules as ``handle`` would)."""
        for event in events:
            self._handlers[type(event)](event)
        out, self._out = self._out, []
        return out

    def next_deadline(self):
        """When the runtime should feed a ``Tick`` (its monotonic clock), or
        None: the first time a blocked worker becomes old enough for its node
        to ask for an extra worker, or an idle worker may recall tasks."""
        young, idle = self._young, self._recalls.idle
        if not young and not idle:
            return None
        while young:
            if self._still_blocked(young[0]) is not None:
                break
            heappop(young)  # unblocked (or gone) since
        while idle:
            if self._still_idle(idle[0]) is not None:
                break
            heappop(idle)  # busy (or gone) since
        if young and idle:
            return min(young[0][0], idle[0][0])
        if young:
            return young[0][0]
        return idle[0][0] if idle else None

    # -------------------------------------------------------------- queries
    def task_state(self, task_id):
        """State of a live task, or None once it finished, failed or was cancelled."""
        task = self._tasks.get(task_id)
        return task.state if task else None

    def object_status(self, object_id):
        obj = self._objects.get(object_id)
        return obj.status if obj else None

    def object_locations(self, object_id):
        """Ids of the nodes holding a copy of the object, in the order their
        copies were reported ([] when none is known or the object is unknown)."""
        obj = self._objects.get(object_id)
        return list(obj.locations) if obj is not None and obj.locations else []

    def object_size(self, object_id):
        """Bytes of one copy of the object as last reported by ``ObjectLocated``
        (0 when never reported), or None for an unknown object."""
        obj = self._objects.get(object_id)
        return obj.size if obj is not None else None

    def worker_task(self, worker_id):
        worker = self._workers.get(worker_id)
        return worker.task_id if worker else None

    def task_spec(self, task_id):
        """The spec of a live task (None once it is gone): the head keeps it as
        the lineage of the task's large results."""
        task = self._tasks.get(task_id)
        return task.spec if task else None

    def return_count(self, task_id):
        """How many values a live task returns (None once it is gone)."""
        task = self._tasks.get(task_id)
        return len(task.spec.return_ids) if task else None

    def nodes(self):
        """One plain dict per known node (dead ones too, with alive=False)."""
        return [
            {
                "node_id": n.node_id,
                "address": n.address,
                "alive": n.alive,
                "resources": dict(n.total),
                "available": {k: max(0.0, v) for k, v in n.available.items()} if n.alive else {},
                "running": n.running,
                "workers": len(n.workers),
            }
            for n in self._nodes.values()
        ]

    def counts(self):
        """Numbers of live tasks by state (for status and tests)."""
        result = {PENDING: 0, READY: 0, RUNNING: 0, ASSIGNED: 0}
        for task in self._tasks.values():
            result[task.state] += 1
        return result

    # --------------------------------------------------------------- events
    def _on_submitted(self, event):
        spec = event.spec
        if spec.task_id in self._tasks:
            return  # a re-submission of a task we already track
        task = _Task(spec)
        self._tasks[spec.task_id] = task
        objects = self._objects
        for return_id in spec.return_ids:
            obj = objects.get(return_id)
            if obj is None:
                objects[return_id] = _Object()
            elif obj.status != PENDING:
                # A task that already ended is submitted again (recomputed): its
                # results are pending until it ends anew, so they cannot be freed
                # under it and new consumers wait for the new values.
                obj.status = PENDING
                obj.failure = None
                self._lend_kept_resources()
        failure = None
        for dep in spec.dependencies:
            obj = objects.get(dep)
            if obj is None:
                failure = Failure("object_lost", f"input object {dep} is unknown to the cluster "
                                                 "(freed, or from another cluster)")
                continue
            obj.consumers += 1
            if obj.status == PENDING:
                if obj.dependents is None:
                    obj.dependents = []
                obj.dependents.append(spec.task_id)
                task.waiting += 1
            elif obj.status == FAILED and failure is None:
                failure = obj.failure
        if failure is None and not event.rebuild and not self._feasible(spec.demand):
            failure = Failure("unschedulable", f"task {spec.name or spec.task_id} demands "
                                               f"{spec.demand}, which no node offers; nodes have "
                                               f"{[n.total for n in self._nodes.values() if n.alive]}")
        if failure is not None:
            self._fail(task, failure)
            return
        if task.waiting == 0:
            self._enqueue(task)
            self._schedule()

    def _on_object_put(self, event):
        obj = self._objects.get(event.object_id)
        if obj is None:
            obj = self._objects[event.object_id] = _Object()
        self._object_ready(obj)
        self._maybe_release(event.object_id, obj)  # its release may have come while it was pending
        self._schedule()

    def _on_finished(self, event):
        task = self._running_task(event.task_id, event.worker_id)
        if task is None:
            return  # a stale report (evicted worker, retried task): first finisher won
        at = event.at
        if at is not None and at > self._now:
            self._now = at
            self._recalls.timed = True
        if event.duration is not None:
            self._note_run_time(task.spec.name, event.duration)
        self._free_worker(event.worker_id, event.task_id, finished=True)
        if task.cancel_requested:
            self._fail(task, _cancelled(task))
        else:
            task.state = FINISHED
            del self._tasks[task.spec.task_id]
            self._out.append(cmd.Publish(task.spec.task_id, task.spec.return_ids))
            objects = self._objects
            for return_id in task.spec.return_ids:
                obj = objects.get(return_id)
                if obj is None:  # put and freed under the task: track it again
                    obj = objects[return_id] = _Object()
                self._object_ready(obj)
            for return_id in task.spec.return_ids:
                # Released while the task ran, and no dependent took it: free it now
                # (as _fail does for a failed task's results).
                obj = objects.get(return_id)
                if obj is not None:
                    self._maybe_release(return_id, obj)
            self._drop_inputs(task)
        self._schedule()
        self._retire_idle_extras(self._node_of(event.worker_id))

    def _on_errored(self, event):
        task = self._running_task(event.task_id, event.worker_id)
        if task is None:
            return
        at = event.at
        if at is not None and at > self._now:
            self._now = at
            self._recalls.timed = True
        self._free_worker(event.worker_id, event.task_id)
        if task.cancel_requested or event.cancelled:
            self._fail(task, _cancelled(task))
        elif event.retryable and task.retries_left != 0:
            self._retry(task, f"raised: {event.failure.message.splitlines()[-1] if event.failure.message else ''}")
        else:
            self._fail(task, event.failure)
        self._schedule()
        self._retire_idle_extras(self._node_of(event.worker_id))

    def _on_node_joined(self, event):
        node = self._nodes.get(event.node_id)
        if node is not None and node.alive:
            # Re-registration of a node we think is alive: forget the old
            # incarnation first so its tasks are retried.
            self._lose_node(node, "node re-registered")
        self._feasibility.clear()
        if node is None:
            order = self._next_order
            self._next_order += 1
        else:
            order = node.order  # the dict keeps its place too
        node = self._nodes[event.node_id] = _Node(event.node_id, event.resources, event.base_workers,
                                                  event.address, event.pipeline, order)
        self._max_depth = max(self._max_depth, int(event.pipeline))
        self._node_changed(node)
        self._schedule()

    def _on_node_lost(self, event):
        node = self._nodes.get(event.node_id)
        if node is None or not node.alive:
            return
        self._lose_node(node, event.reason)
        self._schedule()

    def _on_worker_joined(self, event):
        node = self._nodes.get(event.node_id)
        if node is None or not node.alive or event.worker_id in self._workers:
            self._out.append(cmd.StopWorker(event.worker_id))
            return
        self._workers[event.worker_id] = _Worker(event.worker_id, event.node_id, self._next_seq,
                                                 int(node.pipeline))
        self._next_seq += 1
        node.workers[event.worker_id] = None
        node.idle.append(event.worker_id)
        if node.starting:
            node.starting -= 1
        self._node_changed(node)
        self._schedule()
        self._retire_idle_extras(self._node_of(event.worker_id))

    def _on_worker_lost(self, event):
        worker = self._workers.get(event.worker_id)
        if worker is None:
            return
        node = self._nodes[worker.node_id]
        self._lose_worker(worker, node, f"worker {worker.worker_id} on node {node.node_id} died: {event.reason}")
        self._schedule()
        self._retire_idle_extras(node)

    def _on_worker_blocked(self, event):
        worker = self._workers.get(event.worker_id)
        if worker is None or worker.blocked or worker.task_id is None:
            return
        self._now = max(self._now, event.at)
        worker.blocked_at = event.at
        waits = deque(event.task_ids)
        if waits and not self._still_waiting(waits):
            # All it waits for is done, the values are on their way: it runs
            # again in a moment. Lending its resources out now would only
            # start a worker process for that moment.
            worker.waits = None  # its "unblocked" is still to come
            return
        worker.blocked = True
        node = self._nodes[worker.node_id]
        node.blocked += 1
        spec = self._tasks[worker.task_id].spec
        node.release(spec.demand)
        if len(self._blocking_names) < _MAX_TRACKED_NAMES:
            self._blocking_names.add(spec.name)  # tasks of this name wait in get: never queue them
        self._node_changed(node)
        self._worker_changed(worker)
        worker.waits = waits
        self._watch_young(worker)
        if waits:
            self._help(worker)  # before anything else takes the resources it gave back
        self._schedule()

    def _watch_young(self, worker):
        """A blocked worker: have a ``Tick`` come when it is old enough to count
        in ``_may_grow`` (its node is looked at again then)."""
        if self.extra_worker_delay:
            heappush(self._young, (worker.blocked_at + self.extra_worker_delay, worker.worker_id,
                                   worker.blocked_at))

    def _on_tick(self, event):
        """Blocked workers that have now waited long enough let their nodes
        ask for extra workers: look at those nodes again. Idle workers that
        have waited long enough recall tasks (see "Recall")."""
        self._now = max(self._now, event.now)
        young = self._young
        while young and young[0][0] <= self._now:
            worker = self._still_blocked(heappop(young))
            if worker is not None:
                self._node_changed(self._nodes[worker.node_id])
        idle, since = self._recalls.idle, None
        while idle and idle[0][0] <= self._now:
            worker = self._still_idle(heappop(idle))
            if worker is not None:
                since = worker.idle_since if since is None else max(since, worker.idle_since)
        if since is not None:
            self._recall(since)
        self._schedule()

    def _still_idle(self, entry):
        """The worker of an idle-heap entry if it is still idle since then, else None."""
        _, worker_id, since = entry
        worker = self._workers.get(worker_id)
        if worker is not None and worker.task_id is None and worker.idle_since == since:
            return worker
        return None

    def _still_blocked(self, entry):
        """The worker of a ``_young`` entry if it is still in the get that entry
        was made for (same ``blocked_at``), else None."""
        _, worker_id, blocked_at = entry
        worker = self._workers.get(worker_id)
        if worker is not None and worker.blocked and worker.blocked_at == blocked_at:
            return worker
        return None

    def _on_worker_unblocked(self, event):
        worker = self._workers.get(event.worker_id)
        if worker is None:
            return
        if not worker.blocked:
            if worker.waits is None:  # it kept its resources through this wait
                worker.waits = ()
            elif worker.suspended:
                # The innermost suspended task's get ended early (interrupted)
                # while the worker still has tasks it was given for it: that
                # task runs again once they are done (see _resume).
                task_id, _, queued = worker.suspended[-1]
                worker.suspended[-1] = (task_id, None, queued)
            return
        worker.blocked = False
        worker.sent_back = bool(worker.recalled)  # (see _free_worker)
        worker.waits = ()
        node = self._nodes[worker.node_id]
        node.blocked -= 1
        # Take the resources back even past the node's total (a short
        # oversubscription, as in Ray): the task must finish to free anything.
        node.acquire(self._tasks[worker.task_id].spec.demand)
        self._node_changed(node)
        self._worker_changed(worker)
        self._retire_idle_extras(node)

    def _on_cancel(self, event):
        task = self._tasks.get(event.task_id)
        if task is None:
            return  # finished, failed or unknown: nothing to do
        if task.state == RUNNING:
            if not task.cancel_requested or event.force:
                task.cancel_requested = True
                self._out.append(cmd.InterruptTask(task.spec.task_id, task.worker_id, event.force))
        elif task.state == ASSIGNED:
            # Queued on a worker behind another task: the worker skips it (never
            # kill the worker for it, that would kill the task it runs now).
            if not task.cancel_requested:
                task.cancel_requested = True
                self._out.append(cmd.InterruptTask(task.spec.task_id, task.worker_id, False))
        else:
            self._fail(task, _cancelled(task))

    def _on_rejected(self, event):
        task = self._tasks.get(event.task_id)
        worker = self._workers.get(event.worker_id)
        recalled = worker is not None and bool(worker.recalled) and event.task_id in worker.recalled
        if recalled:
            worker.recalled.discard(event.task_id)
        if recalled and task is not None and task.state == RUNNING and worker.task_id == event.task_id \
                and task.worker_id == event.worker_id and not worker.blocked:
            # Recalled: the task before it ended (and so it runs there, in our
            # books) while the worker gave it back unstarted, answering a
            # RecallTasks on another path than its report. The worker knows best.
            self._free_worker(worker.worker_id, event.task_id)
            task.attempt -= 1  # (counted when it took over from the one before)
            self._requeue_unstarted(task)
            self._schedule()
            self._retire_idle_extras(self._node_of(worker.worker_id))
            return
        if task is None or task.state != ASSIGNED or worker is None or not self._unassign(worker, event.task_id):
            return
        worker.sent_back = True
        self._worker_changed(worker)
        self._requeue_unstarted(task)
        if worker.blocked and worker.waits:
            self._help(worker)  # sent back because its task waits, maybe for this one
        self._schedule()

    @staticmethod
    def _unassign(worker, task_id):
        """Take a task off the worker's queue, or off the queue of a level
        suspended under the task it runs (a task queued behind one that then
        blocked and was helped); False if it is in none."""
        if task_id in worker.queued:
            worker.queued.remove(task_id)
            return True
        for _, _, queued in worker.suspended or ():
            if task_id in queued:
                queued.remove(task_id)
                return True
        return False

    def _requeue_unstarted(self, task):
        """A task given back unstarted (queued on a worker that sent it back or
        died, or whose input could not be fetched) goes back to the front of the
        queue: no retry is used up. It ends cancelled if a cancel is pending,
        and waits or fails if an input was lost meanwhile (``_requeue``)."""
        task.worker_id = None
        if task.cancel_requested:
            self._fail(task, _cancelled(task))
            return
        self._requeue(task, front=True)

    def _on_released(self, event):
        for object_id in event.object_ids:
            obj = self._objects.get(object_id)
            if obj is None:
                continue
            obj.release_requested = True
            self._maybe_release(object_id, obj)

    def _on_object_located(self, event):
        obj = self._objects.get(event.object_id)
        node = self._nodes.get(event.node_id)
        if obj is None or node is None or not node.alive:
            # Released (a late report must not bring it back), or the copy is
            # on a node already lost.
            return
        obj.size = event.size
        if not obj.locations:
            if obj.locations is None:
                obj.locations = {}
            self._located += 1
        obj.locations[event.node_id] = None
        node.objects.add(event.object_id)

    def _on_object_lost(self, event):
        object_id = event.object_id
        obj = self._objects.get(object_id)
        if obj is None or obj.status != READY:
            return  # unknown, already being rebuilt, or failed: nothing more to lose
        self._forget_locations(object_id, obj)
        if event.failure is None:
            self._await_rebuild(object_id, obj)
        else:
            self._fail_lost_object(object_id, obj, event.failure)

    def _await_rebuild(self, object_id, obj):
        """The owner re-submits the object's producer: until it ends, every
        consumer not dispatched yet waits for the object again (dispatched ones
        report ``InputLost`` if they cannot fetch it)."""
        obj.status = PENDING
        unqueued = set()
        # Loss is rare: scanning the live tasks for the consumers costs less
        # overall than an index of consumers kept up on every submission.
        for task in self._tasks.values():
            if task.state not in (PENDING, READY) or object_id not in task.spec.dependencies:
                continue
            if task.state == READY:
                task.state = PENDING
                unqueued.add(task.spec.task_id)
            for dep in task.spec.dependencies:
                if dep == object_id:  # the same input twice counts twice, as on submission
                    task.waiting += 1
                    if obj.dependents is None:
                        obj.dependents = []
                    obj.dependents.append(task.spec.task_id)
        if unqueued:
            self._unqueue(unqueued)

    def _fail_lost_object(self, object_id, obj, failure):
        """The object cannot be rebuilt: it fails for good, and so does every
        consumer not dispatched yet, with its dependents (as ``_fail`` does)."""
        obj.status = FAILED
        obj.failure = failure
        # Loss is rare: scan the live tasks rather than index consumers.
        doomed = [task for task in self._tasks.values()
                  if task.state in (PENDING, READY) and object_id in task.spec.dependencies]
        for task in doomed:
            self._fail(task, failure)  # skips a task an earlier one already failed
        self._maybe_release(object_id, obj)

    def _on_input_lost(self, event):
        task = self._tasks.get(event.task_id)
        worker = self._workers.get(event.worker_id)
        if task is None or worker is None or task.worker_id != event.worker_id \
                or event.object_id not in task.spec.dependencies:
            return  # stale: the task ended, moved on, or is not on that worker
        if task.state == RUNNING and worker.task_id == event.task_id:
            self._free_worker(event.worker_id)
            task.attempt -= 1  # it never ran: retries number the attempts that did
        elif task.state == ASSIGNED and self._unassign(worker, event.task_id):
            self._worker_changed(worker)
        else:
            return
        self._requeue_unstarted(task)
        self._schedule()
        self._retire_idle_extras(self._nodes[worker.node_id])

    # -------------------------------------------------------------- helpers
    def _feasible(self, demand):
        # Cached per demand until a node joins or leaves: submit stays O(1).
        key = self._shape(demand)
        verdict = self._feasibility.get(key)
        if verdict is None:
            alive = [n for n in self._nodes.values() if n.alive]
            # With no node yet, wait for one to join.
            verdict = not alive or any(fits(n.total, demand) for n in alive)
            self._feasibility[key] = verdict
        return verdict

    def _running_task(self, task_id, worker_id):
        task = self._tasks.get(task_id)
        if task is None or task.state != RUNNING or task.worker_id != worker_id:
            return None
        return task

    def _shape(self, demand):
        """The demand as a hashable key. Several times per task, and the head
        gives every task of one demand the same dict: remember the key by the
        dict's identity (the entry holds the dict, so the id cannot be reused)."""
        cached = self._shapes.get(id(demand))
        if cached is not None and cached[0] is demand:
            return cached[1]
        shape = tuple(sorted(demand.items())) if len(demand) > 1 else tuple(demand.items())
        if len(self._shapes) < _MAX_CACHED_SHAPES:
            self._shapes[id(demand)] = (demand, shape)
        return shape

    def _enqueue(self, task):
        task.state = READY
        shape = self._shape(task.spec.demand)
        queue = self._ready.get(shape)
        if queue is None:
            queue = self._ready[shape] = deque()
        if task.spec.nested:
            queue.appendleft(task.spec.task_id)
        else:
            queue.append(task.spec.task_id)

    def _enqueue_front(self, task):
        """Queue a task that was already dispatched once ahead of its shape's
        queue: it was next before, it stays next."""
        task.state = READY
        shape = self._shape(task.spec.demand)
        queue = self._ready.get(shape)
        if queue is None:
            queue = self._ready[shape] = deque()
        queue.appendleft(task.spec.task_id)

    def _unqueue(self, task_ids):
        """Take these tasks out of their ready queues (they wait again): left in,
        they would be queued twice once ready again."""
        shapes = {self._shape(self._tasks[task_id].spec.demand) for task_id in task_ids}
        for shape in shapes:
            queue = self._ready.get(shape)
            if queue is not None:
                self._ready[shape] = deque(task_id for task_id in queue if task_id not in task_ids)

    def _schedule(self):
        """Dispatch queued tasks while some node can take them."""
        if not self._ready:
            return
        tasks = self._tasks
        out = self._out
        emptied = []
        for shape, queue in self._ready.items():
            # Once no node can start a task of this shape and none was asked
            # for a worker, none can for the rest of this loop: queueing behind
            # busy workers changes no node. Skip the search for the next ones.
            no_node = False
            while queue:
                task = tasks.get(queue[0])
                if task is None or task.state != READY:
                    queue.popleft()  # cancelled or failed while queued
                    continue
                if no_node:
                    node = None
                else:
                    commands = len(out)
                    node = self._pick_node(task.spec, shape)
                    no_node = node is None and len(out) == commands
                if node is None:
                    limit = self._pipeline_limit(task.spec.name)
                    worker = None if limit == 0 else self._pick_pipelined(shape, len(queue), limit)
                    if worker is None:
                        break
                    queue.popleft()
                    self._assign(task, worker)
                    continue
                queue.popleft()
                self._start(task, node)
            if not queue:
                emptied.append(shape)
        for shape in emptied:
            del self._ready[shape]

    # ------------------------------------------------------------ indexes
    # Placement must not scan the cluster per task: with a thousand nodes and
    # a million queued tasks, that scan would be the head's whole cost. So the
    # scheduler keeps, up to date as nodes and workers change:
    #
    # * per demand shape (``_Place``): the policy's index of the candidates,
    #   nodes alive with an idle worker and the demand free (placement.py),
    #   and a heap, by registration order, of the nodes alive with the demand
    #   free, no idle worker and none starting (``StartWorker`` goes to the
    #   first of them);
    # * for pipelining, in two levels: each pipelining node keeps, per (shape
    #   of the running task, tasks queued behind it), a heap by join order of
    #   its busy workers that could take one more task (``node.open``); and
    #   ``_open`` lists, per such key and per number of workers of the node,
    #   a heap by registration order of the nodes that may have one, while
    #   the node may take queued tasks (alive, starting no worker). A node's
    #   own changes then cost O(keys), not O(workers): they re-list the node.
    #
    # Every mutation marks its node or worker dirty (``_node_changed``,
    # ``_worker_changed``): a list append. ``_refresh``, before each decision,
    # gives each dirty one a new stamp and pushes it afresh where it belongs.
    # Heap entries carry the stamp they were pushed with and are valid only
    # while it is still their node's or worker's: older ones are dropped when
    # they surface, and swept once they outnumber the live ones. The result
    # is exactly the old scan's choice (tests/test_scheduler_index.py checks
    # this against the scan, event by event).

    def _node_changed(self, node):
        if not node.dirty:
            node.dirty = True
            self._dirty_nodes.append(node)

    def _worker_changed(self, worker):
        if worker.depth and not worker.dirty:  # only pipelining nodes' workers are indexed
            worker.dirty = True
            self._dirty_workers.append(worker)

    def _refresh(self):
        if self._dirty_nodes:
            nodes, self._dirty_nodes = self._dirty_nodes, []
            for node in nodes:
                node.dirty = False
                self._index_node(node)
        if self._dirty_workers:
            workers, self._dirty_workers = self._dirty_workers, []
            for worker in workers:
                worker.dirty = False
                self._index_worker(worker)

    def _index_node(self, node):
        self._stamp += 1
        node.version = self._stamp
        if node.pipeline:
            key = (node.alive and not node.starting, len(node.workers))
            if key != node.pipe_key:
                # Its entries in _open assumed it could pipeline, with so many
                # workers: they are void; list it again where it has workers.
                self._count_pipe_size(node.pipe_key, -1)
                self._count_pipe_size(key, 1)
                node.pipe_key = key
                node.listing.clear()
                if key[0]:
                    for open_key in list(node.open):
                        self._list(node, open_key)
        bound = 2 * len(self._nodes) + 64
        for place in self._places.values():
            self._index_node_in(place, node, bound)

    def _index_node_in(self, place, node, bound):
        if node.alive and fits(node.available, place.demand):
            if node.idle:
                place.candidates.update(node, True)
                return
            if not node.starting and self._may_grow(node):
                _push(place.starters, (node.order, node.version, node), bound)
        place.candidates.update(node, False)

    def _may_grow(self, node):
        """Whether the node may start one more worker for resources it has free
        and no idle worker to use. Resources lent by workers blocked in get
        count only once one of them has been blocked ``extra_worker_delay``:
        a worker process takes ~0.1 s of CPU to start, and most gets (a parent
        whose children run inside its get) end long before it is ready."""
        if not self.extra_worker_delay or not node.blocked:
            return True
        old_enough = self._now - self.extra_worker_delay
        workers = self._workers
        return any(w.blocked and w.blocked_at <= old_enough
                   for w in map(workers.get, node.workers) if w is not None)

    def _index_worker(self, worker):
        if self._workers.get(worker.worker_id) is not worker:
            return  # gone since it was marked (its version is -1)
        self._stamp += 1
        worker.version = self._stamp
        if worker.task_id is None or worker.blocked or worker.sent_back or worker.suspended \
                or len(worker.queued) >= worker.depth:
            return  # (a worker helping a waiting task runs only what that task waits for)
        spec = self._tasks[worker.task_id].spec
        if self.adaptive_pipelining and spec.name in self._blocking_names:
            return  # its task will likely wait in get and send back whatever queued behind it
        node = self._nodes[worker.node_id]
        key = (self._shape(spec.demand), len(worker.queued))
        heap = node.open.get(key)
        if heap is None:
            heap = node.open[key] = []
        _push(heap, (worker.seq, worker.version, worker), 2 * len(node.workers) + 16)
        if key not in node.listing and node.pipe_key[0]:
            self._list(node, key)

    def _count_pipe_size(self, pipe_key, change):
        if pipe_key is None or not pipe_key[0]:
            return
        count = self._pipe_sizes.get(pipe_key[1], 0) + change
        if count:
            self._pipe_sizes[pipe_key[1]] = count
        else:
            del self._pipe_sizes[pipe_key[1]]
        self._fewest_pipe_workers = min(self._pipe_sizes, default=None)

    def _list(self, node, key):
        """Enter ``node`` in ``_open`` under ``key`` (its previous entry there is void)."""
        self._stamp += 1
        node.listing[key] = self._stamp
        buckets = self._open.get(key)
        if buckets is None:
            buckets = self._open[key] = {}
            insort(self._open_levels.setdefault(key[0], []), key[1])
        heap = buckets.get(len(node.workers))
        if heap is None:
            heap = buckets[len(node.workers)] = []
        heappush(heap, (node.order, self._stamp, node))
        if len(heap) > 2 * len(self._nodes) + 64:
            heap[:] = [e for e in heap if e[2].listing is not None and e[2].listing.get(key) == e[1]]
            heapify(heap)

    @staticmethod
    def _first_open(node, key):
        """The first worker of ``node`` (in join order) that can take one more
        task of ``key``, or None."""
        heap = node.open.get(key)
        while heap:
            entry = heap[0]
            if entry[2].version == entry[1]:
                return entry[2]
            heappop(heap)
        if heap is not None:
            del node.open[key]
        return None

    def _place(self, shape, demand):
        """The placement index of a demand shape; made by one scan of the nodes
        the first time (or after it was dropped as the least recently used)."""
        self._stamp += 1
        place = self._places.get(shape)
        if place is None:
            if len(self._places) >= MAX_PLACEMENT_INDEXES:
                del self._places[min(self._places, key=lambda s: self._places[s].used)]
            place = self._places[shape] = _Place(demand, self.policy.index())
            bound = 2 * len(self._nodes) + 64
            for node in self._nodes.values():
                self._index_node_in(place, node, bound)
        place.used = self._stamp
        return place

    # ---------------------------------------------------------- placement
    def _pick_node(self, spec, shape):
        """The node to run ``spec`` on now, or None (then maybe ask a node that
        has the resources free but no idle worker for one more worker)."""
        self._refresh()
        demand = spec.demand
        place = self._place(shape, demand)
        if self._located and self.policy.locality and len(place.candidates) > 1:
            held = self._input_bytes(spec.dependencies)
            if held is not None:
                node = self._pick_local(held, demand)
                if node is not None:
                    return node
        node = self.policy.pick(place.candidates)
        if node is not None:
            return node
        starters = place.starters
        while starters:
            entry = starters[0]
            node = entry[2]
            if node.version == entry[1]:
                # Resources are free but every worker is busy or blocked in get:
                # ask for one more worker so the node stays busy.
                node.starting += 1
                self._node_changed(node)
                self._out.append(cmd.StartWorker(node.node_id))
                return None
            heappop(starters)
        return None

    def _pick_local(self, held, demand):
        """Among the candidates holding some of the inputs, those holding the
        most bytes, chosen by the policy; None when no candidate holds any (the
        policy then chooses among all of them). Only the holders are looked at."""
        nodes = self._nodes
        local = []
        for node_id, size in held.items():
            node = nodes.get(node_id)
            if size > 0 and node is not None and node.alive and node.idle and fits(node.available, demand):
                local.append(node)
        if not local:
            return None
        local.sort(key=_registration_order)  # ties go to the node registered first, as in a scan
        return self.policy.choose(most_local(local, held))

    def _input_bytes(self, dependencies):
        """Node id -> bytes of these inputs stored there, or None when no input
        has a known copy (small inputs: no dict built). An input named twice
        is fetched once, so it counts once."""
        objects = self._objects
        held = None
        for index, dep in enumerate(dependencies):
            obj = objects.get(dep)
            if obj is None or not obj.locations or dep in dependencies[:index]:
                continue
            if held is None:
                held = {}
            size = obj.size
            for node_id in obj.locations:
                held[node_id] = held.get(node_id, 0) + size
        return held

    # ------------------------------------------------ how deep to pipeline
    def _note_run_time(self, name, seconds):
        average = self._run_times.get(name)
        if average is None:
            if len(self._run_times) >= _MAX_TRACKED_NAMES:
                return
            self._run_times[name] = seconds
        else:
            self._run_times[name] = average + _RUN_TIME_WEIGHT * (seconds - average)

    def _pipeline_limit(self, name):
        """How many tasks of this name may wait behind a busy worker: none for
        tasks that wait in ``get`` (one queued behind them would only be sent
        back); else about PIPELINE_BUDGET seconds of them by their average run
        time — deep for tiny tasks (throughput), one for long ones, so that a
        worker never hoards work another idle worker could have started; two
        while the run time is not known yet."""
        if not self.adaptive_pipelining:
            return None
        if name in self._blocking_names:
            return 0
        average = self._run_times.get(name)
        if average is None:
            return _UNKNOWN_RUN_TIME_LIMIT
        return max(1, int(PIPELINE_BUDGET / max(average, 1e-7)))

    def _pick_pipelined(self, shape, backlog, limit=None):
        """A busy worker of a pipelining node whose current task has this exact
        demand shape and fewer tasks queued behind it than the node's pipeline
        depth (each one's resources pass straight on to the next). Shallowest
        queue first, then by node registration and worker join order.

        Only for a backlog longer than the node has workers, and never while
        the node is still starting workers: a task queued behind a long one
        waits for it, which is worth it only when every worker has more work
        coming anyway (throughput), not for a handful of tasks (latency).
        The index groups nodes by worker count, so that condition skips
        whole groups instead of looking at each node."""
        if not self._max_depth:
            return None
        self._refresh()
        fewest = self._fewest_pipe_workers
        if fewest is None or fewest >= backlog:
            # No node has fewer workers than the backlog: none would be chosen
            # at any queue length, so do not walk them all (up to the depth,
            # per call: the cost of every submit while the workers keep up).
            return None
        levels = self._open_levels.get(shape)
        if not levels:
            return None
        # Only the queue lengths that have entries, shallowest first: with
        # deep pipelines most of the 0..depth-1 range is empty.
        for queued in list(levels):
            if limit is not None and queued >= limit:
                break
            key = (shape, queued)
            buckets = self._open[key]
            if not buckets:
                del self._open[key]
                levels.remove(queued)
                continue
            best_order = best = None
            for count, heap in list(buckets.items()):
                if count >= backlog:
                    continue
                while heap:
                    order, stamp, node = heap[0]
                    if node.listing.get(key) == stamp:
                        worker = self._first_open(node, key)
                        if worker is not None:
                            break
                        del node.listing[key]  # none of its workers can take one any more
                    heappop(heap)
                else:
                    del buckets[count]
                    continue
                if best is None or order < best_order:
                    best_order, best = order, worker
            if best is not None:
                return best
        return None

    def _assign(self, task, worker):
        task.state = ASSIGNED
        task.worker_id = worker.worker_id
        worker.queued.append(task.spec.task_id)
        self._worker_changed(worker)
        self._out.append(cmd.Dispatch(task.spec, worker.worker_id, worker.node_id))

    def _start(self, task, node):
        worker_id = node.idle.pop()
        worker = self._workers[worker_id]
        worker.task_id = task.spec.task_id
        worker.moved_at = self._now
        worker.idle_since = None
        node.acquire(task.spec.demand)
        node.running += 1
        self._node_changed(node)
        self._worker_changed(worker)
        task.state = RUNNING
        task.worker_id = worker_id
        task.attempt += 1
        self._out.append(cmd.Dispatch(task.spec, worker_id, node.node_id))

    def _free_worker(self, worker_id, task_id=None, finished=False):
        """The worker's task ``task_id`` (default: the one it runs) ended;
        ``finished``: it returned (it will not run again)."""
        worker = self._workers[worker_id]
        if task_id is not None and task_id != worker.task_id:
            self._drop_suspended(worker, task_id)
            return
        worker.moved_at = self._now
        if worker.recalled:
            worker.recalled.discard(worker.task_id)  # it ran here after all
        node = self._nodes[worker.node_id]
        demand = self._tasks[worker.task_id].spec.demand
        blocked = worker.blocked
        worker.task_id = None
        worker.blocked = False
        # Nothing more behind it while tasks it was asked back are unanswered:
        # it may have given back a task we are about to count as started here,
        # and must not run one we would queue behind that one.
        worker.sent_back = bool(worker.recalled)
        worker.waits = ()
        self._worker_changed(worker)
        if worker.queued:
            # The task queued behind it starts now on the worker: it takes over
            # the resources without a round trip. With the same demand (tasks
            # queue behind one of their own shape) the node is unchanged: it
            # needs no new place in the indexes.
            following = self._tasks[worker.queued[0]]
            worker.task_id = worker.queued.pop(0)
            following.state = RUNNING
            following.attempt += 1
            next_demand = following.spec.demand
            if blocked or (next_demand is not demand and next_demand != demand):
                if blocked:
                    node.blocked -= 1
                else:
                    node.release(demand)
                node.acquire(next_demand)
                self._node_changed(node)
            return
        if blocked:
            node.blocked -= 1
        else:
            node.release(demand)
        self._node_changed(node)
        if worker.suspended:
            self._resume(worker, node, task_id if finished else None)
            return
        node.running -= 1
        node.idle.append(worker_id)
        recall = self._recalls
        if recall.timed and recall.after is not None:
            # (If _schedule gives it a task at once, this entry is dropped unused.)
            worker.idle_since = self._now
            heappush(recall.idle, (self._now + recall.after, worker_id, self._now))

    # ------------------------------------------------------------- recall
    # Pipelining queues tasks behind a busy worker's task by its name's average
    # run time, which cannot foresee one run that takes much longer: the tasks
    # behind it would wait for it while other workers sit idle (Dask steals
    # such work). So a worker that goes idle (``_free_worker``; the time is
    # the latest report's, ``TaskFinished.at``) and finds nothing to run waits
    # ``recall_after`` (a Tick); if it is still idle then, every worker that has tasks queued
    # and has not started or ended a task since that worker went idle is asked
    # for them back (``RecallTasks``): its task has run at least that long.
    # The worker sends back those it has not started (``TaskRejected``, to the
    # front of the queue, as a worker blocked in get does) and is queued
    # nothing more until its task ends (``sent_back``).
    def _recall(self, since):
        """Ask back what waits behind the tasks that ran all the time since ``since``."""
        for worker in self._workers.values():
            # (Not from a worker running tasks inside a get: those queued there are
            # the get's own, see "Helping".)
            if worker.queued and worker.task_id is not None and worker.moved_at < since \
                    and not worker.blocked and not worker.sent_back and not worker.suspended:
                worker.sent_back = True  # nothing more behind it until its task ends
                if worker.recalled is None:
                    worker.recalled = set()
                worker.recalled.update(worker.queued)
                self._worker_changed(worker)
                self._out.append(cmd.RecallTasks(worker.worker_id, worker.node_id, tuple(worker.queued)))

    # ------------------------------------------------------------ helping
    # A task that waits in ``get`` for tasks it submitted gives its resources
    # back; rather than start another worker process for its children (which
    # costs a process and leaves this one idle), its own worker runs them,
    # inside that ``get``: like a work-first scheduler's join, or Dask's
    # secede/rejoin without the thread. Only tasks it waits for (so nothing
    # unrelated can hold it up), ready now, whose demand fits in what it gave
    # back (so they run in its place), and no deeper than MAX_NESTING. The
    # worker keeps a stack: the task it runs now on top of the suspended ones.
    # Ready children of a tiny run time go together (as pipelining would);
    # when they are done the waiting task is resumed (still blocked) and the
    # worker helps again with whatever became ready meanwhile.

    def _help(self, worker):
        """Run on the blocked ``worker`` the ready tasks its task waits for."""
        suspended = worker.suspended
        if suspended is not None and len(suspended) >= MAX_NESTING:
            return
        tasks = self._tasks
        waiting = tasks[worker.task_id]
        node = self._nodes[worker.node_id]
        chosen, shape, limit = [], None, 1
        self._still_waiting(worker.waits)
        # Only a window at the front: a get on a hundred thousand tasks must not
        # cost a hundred thousand look-ups each time the worker is helped.
        for task_id in islice(worker.waits, HELP_WINDOW):
            task = tasks.get(task_id)
            if task is None or task.state != READY:
                continue
            demand = task.spec.demand
            if shape is None:
                if not (fits(waiting.spec.demand, demand) and fits(node.available, demand)):
                    continue
                shape = self._shape(demand)
                limit = self._pipeline_limit(task.spec.name) or 1
            elif self._shape(demand) != shape:
                continue  # queued ones take over the first one's resources: same shape only
            chosen.append(task)
            if len(chosen) >= limit:
                break
        if not chosen:
            return
        # Their ids stay in the ready queue (finding them there costs O(queue)):
        # _schedule drops an id whose task is no longer ready when it comes up,
        # and dispatches only ready tasks, so a stale id never runs one twice.
        if suspended is None:
            suspended = worker.suspended = []
        suspended.append((worker.task_id, worker.waits, worker.queued))
        first = chosen[0]
        worker.task_id = first.spec.task_id
        worker.waits = ()
        worker.queued = [task.spec.task_id for task in chosen[1:]]
        worker.blocked = False
        node.blocked -= 1
        node.acquire(first.spec.demand)
        self._node_changed(node)
        self._worker_changed(worker)
        first.state = RUNNING
        first.attempt += 1
        for task in chosen[1:]:
            task.state = ASSIGNED
        for task in chosen:
            task.worker_id = worker.worker_id
            self._out.append(cmd.Dispatch(task.spec, worker.worker_id, node.node_id, True))

    def _resume(self, worker, node, finished_id=None):
        """The tasks the worker ran for its suspended task are done (the last
        one, ``finished_id``, returned just now): that one is on top again,
        still waiting in get (resources free); help again."""
        worker.task_id, worker.waits, worker.queued = worker.suspended.pop()
        if not worker.suspended:
            worker.suspended = None
        if worker.waits is None:  # it stopped waiting meanwhile: it runs again
            worker.waits = ()
            node.acquire(self._tasks[worker.task_id].spec.demand)
            return
        if worker.waits and not self._still_waiting(worker.waits, finished_id):
            # All it waits for is done: it runs again in a moment; it keeps the
            # resources (as in _on_worker_blocked), its "unblocked" is to come.
            worker.waits = None
            node.acquire(self._tasks[worker.task_id].spec.demand)
            return
        worker.blocked = True
        node.blocked += 1
        self._watch_young(worker)  # (blocked since its get began: its entry may have gone meanwhile)
        if worker.waits:
            self._help(worker)

    def _lend_kept_resources(self):
        """A finished task runs again (its result was lost): a worker that kept
        its resources through a get because everything it waited for was done
        may wait for this one now, so it gives them back as any blocked worker
        does (else the rebuild might find none free). Rare: a scan is fine."""
        for worker in self._workers.values():
            if worker.waits is None and not worker.blocked and worker.task_id is not None:
                node = self._nodes[worker.node_id]
                worker.waits = ()
                worker.blocked = True
                node.blocked += 1
                self._watch_young(worker)
                node.release(self._tasks[worker.task_id].spec.demand)
                self._node_changed(node)
                self._worker_changed(worker)

    def _still_waiting(self, waits, finished_id=None):
        """Whether a task it waits for is still to end (``finished_id`` just
        did). Drops the ended ones from the front of ``waits`` on the way, so
        that a get on many tasks costs each look O(1) amortized, not O(n)."""
        tasks = self._tasks
        while waits and (waits[0] not in tasks or waits[0] == finished_id):
            waits.popleft()
        return bool(waits)

    def _drop_suspended(self, worker, task_id):
        """A suspended task ended before those above it (its get was
        interrupted): take it off the stack. It holds no resources; the tasks
        queued behind it now follow those of the level above it (the worker
        runs what its get left over first)."""
        suspended = worker.suspended or []
        for index, (suspended_id, _, queued) in enumerate(suspended):
            if suspended_id == task_id:
                del suspended[index]
                if index < len(suspended):
                    above = suspended[index]
                    suspended[index] = (above[0], above[1], above[2] + queued)
                else:
                    worker.queued = worker.queued + queued
                if not suspended:
                    worker.suspended = None
                return

    def _node_of(self, worker_id):
        worker = self._workers.get(worker_id)
        return self._nodes[worker.node_id] if worker is not None else None

    def _retire_idle_extras(self, node):
        """Stop extra workers (started for blocked ones) once they sit idle and
        no worker of the node is blocked any more: a recursive task graph keeps
        its extra workers instead of starting new ones for every level."""
        if node is None:
            return
        while node.idle and len(node.workers) > node.base_workers and not node.blocked:
            retired = node.idle.pop(0)
            del node.workers[retired]
            self._workers.pop(retired).version = -1
            self._node_changed(node)
            self._out.append(cmd.StopWorker(retired))

    def _lose_worker(self, worker, node, reason):
        del self._workers[worker.worker_id]
        worker.version = -1  # its pipelining index entries are void
        node.workers.pop(worker.worker_id, None)
        if worker.worker_id in node.idle:
            node.idle.remove(worker.worker_id)
        self._node_changed(node)
        suspended = worker.suspended or ()
        for task_id in reversed(worker.queued):  # back to the front of the queue, in order
            self._requeue_unstarted(self._tasks[task_id])
        for _, _, queued in reversed(suspended):
            for task_id in reversed(queued):
                self._requeue_unstarted(self._tasks[task_id])
        worker.queued = []
        worker.suspended = None
        if worker.task_id is None:
            return
        task = self._tasks[worker.task_id]
        if worker.blocked:
            node.blocked -= 1
        else:
            node.release(task.spec.demand)
        node.running -= 1
        # The task it ran, then those suspended under it (they hold nothing).
        for task in [task] + [self._tasks[task_id] for task_id, _, _ in reversed(suspended)]:
            if task.state != RUNNING:
                continue  # failed meanwhile with an earlier one's dependents
            if task.cancel_requested:
                self._fail(task, _cancelled(task))
            elif task.retries_left != 0:
                self._retry(task, reason)
            else:
                name = task.spec.name or task.spec.task_id
                self._fail(task, Failure("worker_crashed", f"task {name} failed after "
                                                           f"{task.attempt} attempt(s): {reason}"))

    def _lose_node(self, node, reason):
        node.alive = False
        self._feasibility.clear()
        self._node_changed(node)
        for worker_id in list(node.workers):
            self._lose_worker(self._workers[worker_id], node,
                              f"node {node.node_id} lost ({reason}) while worker {worker_id} ran it")
        node.available = {}
        node.idle = []
        node.starting = 0
        self._forget_node_objects(node)

    def _forget_node_objects(self, node):
        """The node's copies are gone. Whether an object lost its last copy is
        the owner's call (it sends ``ObjectLost``): it knows the directory."""
        objects = self._objects
        for object_id in node.objects:
            obj = objects.get(object_id)
            if obj is None or not obj.locations:
                continue
            obj.locations.pop(node.node_id, None)
            if not obj.locations:
                self._located -= 1
        node.objects = set()

    def _forget_locations(self, object_id, obj):
        if obj.locations:
            nodes = self._nodes
            for node_id in obj.locations:
                nodes[node_id].objects.discard(object_id)
            self._located -= 1
        obj.locations = None

    def _retry(self, task, reason):
        task.worker_id = None
        failure = self._failed_input(task)
        if failure is not None:
            self._fail(task, failure)  # an input was lost for good meanwhile: no retry can help
            return
        if task.retries_left > 0:
            task.retries_left -= 1
        self._out.append(cmd.Retry(task.spec.task_id, task.attempt + 1, reason))
        self._requeue(task, front=False)

    def _requeue(self, task, front):
        """Queue again a task that was dispatched. Its inputs were ready then,
        but one may have been lost since (``ObjectLost``): it then waits for
        the rebuild, or fails, instead of being dispatched only to fail to
        fetch it. (Retries and sent-back tasks are rare next to dispatches:
        the look at the inputs costs little.)"""
        objects = self._objects
        pending = None
        for dep in task.spec.dependencies:
            obj = objects.get(dep)
            if obj is None:  # cannot happen while the task counts as a consumer
                self._fail(task, Failure("object_lost", f"input object {dep} is unknown to the cluster"))
                return
            if obj.status != READY:
                if obj.status == FAILED:
                    self._fail(task, obj.failure)
                    return
                if pending is None:
                    pending = []
                pending.append(obj)
        if pending is None:
            if front:
                self._enqueue_front(task)
            else:
                self._enqueue(task)  # the back (nested tasks: the front)
            return
        task.state = PENDING
        task.waiting = len(pending)
        for obj in pending:
            if obj.dependents is None:
                obj.dependents = []
            obj.dependents.append(task.spec.task_id)

    def _failed_input(self, task):
        """The failure of the first failed input of a task, or None."""
        objects = self._objects
        for dep in task.spec.dependencies:
            obj = objects.get(dep)
            if obj is not None and obj.status == FAILED:
                return obj.failure
        return None

    def _object_ready(self, obj):
        obj.status = READY
        dependents, obj.dependents = obj.dependents, None
        if not dependents:
            return
        tasks = self._tasks
        for task_id in dependents:
            task = tasks.get(task_id)
            if task is not None and task.state == PENDING:
                task.waiting -= 1
                if task.waiting == 0:
                    self._enqueue(task)

    def _fail(self, root, failure):
        """Fail ``root`` and, transitively, every pending task downstream of it."""
        stack = [root]
        while stack:
            task = stack.pop()
            if task.state in (FINISHED, FAILED, CANCELLED):
                continue
            task.state = CANCELLED if failure.kind == "cancelled" else FAILED
            self._tasks.pop(task.spec.task_id, None)
            self._out.append(cmd.FailTask(task.spec.task_id, task.spec.return_ids, failure))
            self._drop_inputs(task)
            for return_id in task.spec.return_ids:
                obj = self._objects.get(return_id)
                if obj is None:  # put and freed under the task: track it again
                    obj = self._objects[return_id] = _Object()
                obj.status = FAILED
                obj.failure = failure
                dependents, obj.dependents = obj.dependents, None
                for dep_id in dependents or ():
                    dependent = self._tasks.get(dep_id)
                    if dependent is not None:
                        stack.append(dependent)
                self._maybe_release(return_id, obj)

    def _drop_inputs(self, task):
        objects = self._objects
        for dep in task.spec.dependencies:
            obj = objects.get(dep)
            if obj is not None:
                obj.consumers -= 1
                if obj.release_requested:
                    self._maybe_release(dep, obj)

    def _maybe_release(self, object_id, obj):
        if obj.release_requested and obj.consumers <= 0 and obj.status != PENDING:
            if obj.locations:
                self._forget_locations(object_id, obj)
            del self._objects[object_id]
            self._out.append(cmd.ReleaseObject(object_id))


def _cancelled(task):
    return Failure("cancelled", f"task {task.spec.name or task.spec.task_id} was cancelled")
