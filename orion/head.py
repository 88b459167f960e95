"""The head: the scheduler plus the tables around it, behind a transport.

``Head`` turns what peers say (submit, put, task done, worker joined, ...)
into scheduler events, and carries out the scheduler's commands through a
``HeadTransport``: it attaches input values and functions to dispatches,
stores results and failures, and delivers them to the tasks' owners and to
whoever asked. It is single-threaded: the in-process runtime calls it under
one lock, the ZeroMQ head from its one socket thread. Both runtimes use this
same class, so every scheduling rule lives in exactly one place.

Large values do not pass through the head: a worker leaves them in its
node's store, and the head's store keeps a ``Remote`` entry instead — the
object directory: size and holders. The head hands that entry to whoever
needs the value, records new copies, tells holders to free what nothing
uses any more, and keeps the lineage (the producing task's spec) of every
large task result still referenced, so that a value lost with its node is
made again by re-running its task (``_lose``). Objects whose refs travel
beyond their owner (inside arguments and values, into the processes that
unpickle them) outlive its release while anything may use them
(``nested_refs.NestedRefs``).
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque

from .ids import return_ids, task_of
from .nested_refs import NestedRefs
from .object_store import Failed, ObjectStore, Remote
from .observe.tasklog import TaskLog
from .scheduler import commands as cmd
from .scheduler import events as ev
from .scheduler.events import Failure
from .scheduler.state import Scheduler

log = logging.getLogger("orion.head")

# Twice a well-behaved client's own limit (Client.max_unfinished): only a peer
# that ignores back-pressure ever reaches it.
MAX_UNFINISHED_PER_OWNER = int(os.environ.get("ORION_MAX_UNFINISHED_PER_OWNER", 200_000))
# Distinct task names and demands shared between the tasks that use them (see
# Head._slim); past this many, new ones are kept per task, as they came.
MAX_SHARED = 10_000
_NO_BUFFERS = ()


class TaskRecord:
    """The runtime half of a task, carried opaquely as ``TaskSpec.payload``.

    ``args`` is a pair: ``(args, kwargs)`` in-process, ``(header, buffers)``
    serialized over the wire. Its two halves are kept in two slots rather
    than as a tuple of their own: a queued task is 48 bytes smaller (a head
    may hold a million of them). ``holds``: the ids of the refs pickled
    inside the arguments, not as top-level dependencies (``NestedRefs``)."""

    __slots__ = ("function_id", "_args", "_buffers", "num_returns", "retry_exceptions", "owner", "holds")

    def __init__(self, function_id, args, num_returns, retry_exceptions, owner, holds=()):
        self.function_id = function_id
        self._args, self._buffers = args
        self.num_returns = num_returns
        self.retry_exceptions = retry_exceptions
        self.owner = owner  # peer id of the client that submitted it
        self.holds = holds

    @property
    def args(self):
        return self._args, self._buffers

    @args.setter
    def args(self, pair):
        self._args, self._buffers = pair


class Head:
    def __init__(self, transport, policy="least_loaded", store=None, adaptive_pipelining=False,
                 extra_worker_delay=0.0):
        """``extra_worker_delay``: see ``Scheduler``; a runtime that sets it
        feeds ``tick`` when ``scheduler.next_deadline()`` is due."""
        self.transport = transport
        self.scheduler = Scheduler(policy, adaptive_pipelining, extra_worker_delay)
        self.store = store if store is not None else ObjectStore()
        self.functions = {}  # function id -> function (object or pickled blob)
        self.owners = {}  # object id -> peer that submitted (or put) it
        self.subscribers = {}  # object id -> set of peers that asked for it
        self.unfinished_by_owner = {}  # peer -> its tasks not finished yet (bounded)
        self.max_unfinished_per_owner = MAX_UNFINISHED_PER_OWNER
        self.tasklog = TaskLog()  # per-task times and per-name counts (orion.observe)
        self._results = {}  # task id -> values reported, until the scheduler accepts them
        self._later = deque()  # events raised while carrying out commands
        # The object directory beyond the Remote entries themselves:
        self.holders = {}  # node or driver id -> its Holder (how peers reach its store)
        self.held = {}  # node or driver id -> ids of the Remote objects it holds a copy of
        self.lineage = {}  # id of a large task result -> spec of the task that made it
        self._lineage_uses = {}  # object id -> lineage specs that take it as input (kept while > 0)
        self._producers = {}  # task id -> (spec, node id) of a finished task with large results
        self._rebuilding = set()  # ids of tasks re-run to make lost objects again
        self.nested = NestedRefs()  # what holds objects whose refs travel beyond their owner
        self._result_refs = {}  # task id -> refs named by its reported results, until accepted
        self.traffic = {"in": 0, "out": 0}  # bytes through the head's socket (the transport counts)
        self.closing = False  # the whole cluster is shutting down: lost objects are not rebuilt
        self._shared = {}  # function id or task name -> the one copy that tasks point to (memory)
        self._demands = {}  # demand items -> the one dict that tasks of that demand point to

    # ----------------------------------------------------------- client side
    def register_function(self, function_id, function):
        self.functions.setdefault(function_id, function)
        self._shared.setdefault(function_id, function_id)

    def submit(self, specs):
        owners, unfinished, limit = self.owners, self.unfinished_by_owner, self.max_unfinished_per_owner
        accepted = []
        for spec in specs:
            owner = spec.payload.owner
            count = unfinished.get(owner, 0)
            if count >= limit:
                # A peer that ignores back-pressure: refuse rather than grow without bound.
                self._refuse(spec, f"the head refused task {spec.name or spec.task_id}: its driver already "
                                   f"has {count} unfinished tasks (the limit is {limit})")
                continue
            unfinished[owner] = count + 1
            for return_id in spec.return_ids:
                owners[return_id] = owner
            self._slim(spec)
            if spec.payload.holds:
                self.nested.task_submitted(spec.task_id, spec.payload.holds)
            accepted.append(spec)
        self.tasklog.submitted(accepted)
        self._feed([ev.TaskSubmitted(spec) for spec in accepted])

    def _slim(self, spec):
        """Memory only: a queued task should cost the head as little as possible
        (a million of them must fit in well under a gigabyte). Tasks decoded
        from the wire each carry their own copy of their function id, name and
        demand dict, and an empty list of argument buffers; point them at one
        shared copy instead (none of these is ever modified)."""
        shared = self._shared
        record = spec.payload
        function_id = shared.get(record.function_id)
        if function_id is not None:
            record.function_id = function_id
        name = shared.get(spec.name)
        if name is None and len(shared) < MAX_SHARED:
            name = shared[spec.name] = spec.name
        if name is not None:
            spec.name = name
        demand = spec.demand
        key = tuple(demand.items())  # in the order given: equal dicts in another order share less, no harm
        canonical = self._demands.get(key)
        if canonical is None and len(self._demands) < MAX_SHARED:
            canonical = self._demands[key] = demand
        if canonical is not None:
            spec.demand = canonical
        buffers = record._buffers
        if type(buffers) is list and not buffers:
            record._buffers = _NO_BUFFERS  # serialized arguments with no out-of-band buffer: share one ()

    def _refuse(self, spec, message):
        failed = Failed(Failure("unschedulable", message))
        for return_id in spec.return_ids:  # told to the owner only: nothing is kept
            self.transport.deliver(spec.payload.owner, return_id, failed)

    def put(self, peer, object_id, value, holder_id=None):
        """``value``: serialized inline, or a ``Remote`` held by ``holder_id``
        (the putting worker's node, or the driver that serves it)."""
        events = []
        if type(value) is Remote:
            value = Remote(value.size, (self.holders[holder_id],))
            self.held.setdefault(holder_id, set()).add(object_id)
            events.append(ev.ObjectLocated(object_id, holder_id, value.size))
        self.store.put(object_id, value)
        self.owners[object_id] = peer
        self._feed([ev.ObjectPut(object_id), *events])

    def holder_joined(self, holder_id, holder):
        """A node (or a driver serving its puts) can hand out objects at ``holder``."""
        self.holders[holder_id] = holder

    def subscribe(self, peer, object_ids):
        """``peer`` wants these values: deliver now, or once they are stored."""
        store = self.store
        for object_id in object_ids:
            entry = store.lookup(object_id)
            if entry is not None or object_id in store:
                self.transport.deliver(peer, object_id, entry)
            elif self.scheduler.object_status(object_id) is None:
                self.transport.deliver(peer, object_id, Failed(Failure(
                    "object_lost", f"object {object_id} is not known to this cluster (it may belong to "
                                   "a cluster that was shut down, or it was freed)")))
            else:
                self.subscribers.setdefault(object_id, set()).add(peer)
        self.transport.flush()

    def knows(self, object_id):
        return object_id in self.store or self.scheduler.object_status(object_id) is not None

    def cancel(self, task_id, force=False):
        self._feed([ev.CancelRequested(task_id, force)])

    def release(self, object_ids):
        """The owner no longer names these objects."""
        self.refs(None, object_ids)

    def refs(self, peer, released=(), borrowed=(), unborrowed=(), contained=()):
        """What ``peer``'s client says of refs, in this order: stored values
        that name these refs (``contained``: ``[[container id, [ids]]...]``),
        others' objects it now holds a ref to and no longer holds, and its own
        objects it released (freed once nothing holds or needs them; see
        ``NestedRefs``)."""
        nested = self.nested
        if not (contained or borrowed or unborrowed or nested):  # (a driver's plain releases)
            if released:
                self._feed([ev.ObjectsReleased(tuple(released))])
            return
        for container_id, object_ids in contained:
            nested.contained(container_id, tuple(object_ids))
        if borrowed:
            nested.borrowed(peer, borrowed)
        free = nested.unborrowed(peer, unborrowed) if unborrowed else []
        if released:
            free.extend(nested.releasable(released) if nested else released)
        if free:
            self._feed([ev.ObjectsReleased(tuple(free))])

    def driver_gone(self, peer, why):
        """A remote driver is gone (it said goodbye, or fell silent): what it
        owned goes (``owners_gone``); so do the values it served itself (its
        large puts)."""
        self.owners_gone([peer])
        self.holder_lost(peer, why)

    def owners_gone(self, peers):
        """These processes (drivers, worker processes) are gone: what each
        owned is released, as if every ref of its had died, so a cluster that
        outlives them does not keep their objects (results of the tasks they
        submitted, their puts) for good. Whatever holds them beyond their
        owner (tasks, stored values, other processes' borrows: ``NestedRefs``)
        keeps them until it lets go. Their unfinished tasks whose results
        nothing else holds would run for nothing: they are cancelled (as Ray
        does a dead owner's); the others run on. Their borrows go too. One
        pass over the owner table for all of them (a lost node loses all its
        workers)."""
        peers = set(peers)
        owned = [object_id for object_id, owner in self.owners.items() if owner in peers]
        scheduler, holds = self.scheduler, self.nested.holds
        cancels = []
        for object_id in owned:
            if object_id.endswith("0001"):  # (a task's first return: one check per task)
                spec = scheduler.task_spec(task_of(object_id))
                if spec is not None and not any(holds(r) for r in spec.return_ids):
                    cancels.append(ev.CancelRequested(spec.task_id, False))
        if cancels:
            log.info("cancelling %d unfinished task(s) of a departed owner", len(cancels))
            self._feed(cancels)
        if owned:
            self.refs(None, released=owned)
        for subscribed in self.subscribers.values():
            subscribed.difference_update(peers)
        for peer in peers:
            self.peer_gone(peer)

    def peer_gone(self, peer):
        """A driver or worker process is gone: so are the refs it borrowed."""
        free = self.nested.peer_gone(peer)
        if free:
            self._feed([ev.ObjectsReleased(tuple(free))])

    # ----------------------------------------------------------- worker side
    def task_done(self, worker_id, task_id, values, times=None, node_id=None, at=None, contained=()):
        """``times``: ``(started, finished)`` wall-clock seconds, as the worker ran it.
        A ``Remote`` value stays in the store of ``node_id``, the worker's node.
        ``at``: when the report came (monotonic clock; lets idle workers recall
        tasks queued behind a slow one, see the scheduler's "Recall").
        ``contained``: ``[[result id, [ids of the refs its value names]]...]``
        (they count once the result is accepted, before the task lets go of
        what it held: see ``NestedRefs``)."""
        self.tasks_done(worker_id, [(task_id, values, times, contained)], node_id, at)

    def tasks_done(self, worker_id, reports, node_id=None, at=None):
        """``task_done`` for each ``(task id, values, times, contained)`` that one
        worker reported together (it ran them back to back): the scheduler
        takes them as one batch of events."""
        results, tasklog = self._results, self.tasklog
        events = []
        for task_id, values, times, contained in reports:
            if contained:
                self._result_refs[task_id] = contained
            if times is not None:
                tasklog.reported(worker_id, task_id, times)
            if node_id is not None and any(type(v) is Remote for v in values):
                holder = (self.holders[node_id],)
                values = [Remote(v.size, holder) if type(v) is Remote else v for v in values]
                self._producers[task_id] = (self.scheduler.task_spec(task_id), node_id)
            results[task_id] = values
            events.append(ev.TaskFinished(task_id, worker_id, None if times is None else times[1] - times[0], at))
        self._feed(events)
        for task_id, _, _, contained in reports:
            if contained:
                self._result_refs.pop(task_id, None)  # (not accepted: a stale attempt's values name nothing)
            values = results.pop(task_id, None)
            if values is not None:  # not accepted (a stale or cancelled attempt): free its copies
                self._producers.pop(task_id, None)
                if node_id is not None:
                    self.transport.free(node_id, [r for r, v in zip(return_ids(task_id, len(values)), values)
                                                  if type(v) is Remote])

    def task_failed(self, worker_id, task_id, failure, retryable=False, cancelled=False, times=None, at=None):
        if times is not None:
            self.tasklog.reported(worker_id, task_id, times)
        self._feed([ev.TaskErrored(task_id, worker_id, failure, retryable, cancelled, at)])

    def task_rejected(self, worker_id, task_id):
        self._feed([ev.TaskRejected(task_id, worker_id)])

    # ---------------------------------------------------- object directory
    def copied(self, node_id, object_ids):
        """``node_id`` now holds copies of these objects (a worker fetched them)."""
        events = []
        holder = self.holders.get(node_id)
        for object_id in object_ids:
            entry = self.store.lookup(object_id)
            if type(entry) is Remote and holder is not None and holder not in entry.holders:
                entry.holders = entry.holders + (holder,)
                self.held.setdefault(node_id, set()).add(object_id)
                events.append(ev.ObjectLocated(object_id, node_id, entry.size))
            elif entry is None or object_id not in self.store:
                self.transport.free(node_id, [object_id])  # freed meanwhile: drop the copy
        self._feed(events)

    def unreachable(self, object_id, holder_ids):
        """A peer could not fetch ``object_id`` from these holders: forget
        them as holders; with none left, the object is lost (``_lose``)."""
        entry = self.store.lookup(object_id)
        if type(entry) is not Remote:
            return
        gone = set(holder_ids)
        kept = tuple(h for h in entry.holders if h.node_id not in gone)
        for holder_id in gone:
            self.held.get(holder_id, set()).discard(object_id)
        entry.holders = kept
        if not kept:
            self._lose([object_id], f"no holder could hand it over (tried {', '.join(sorted(gone))})")

    def input_lost(self, worker_id, task_id, object_id, holder_ids):
        """A worker could not fetch an input of its task: the task waits for it again."""
        self.unreachable(object_id, holder_ids)
        self._feed([ev.InputLost(task_id, worker_id, object_id)])

    def _lose(self, object_ids, why):
        """Every copy of these objects is gone: re-run the tasks that made them
        (and, first, those of their inputs that are gone too), or fail them
        with ``object_lost`` where there is no lineage."""
        events, specs, released = [], {}, []
        for object_id in object_ids:
            self._plan_rebuild(object_id, why, events, specs, released)
        for spec in specs.values():
            self._rebuilding.add(spec.task_id)
            if spec.payload.holds:
                self.nested.task_submitted(spec.task_id, spec.payload.holds)
            log.warning("re-running task %s to rebuild lost object(s) %s", spec.name or spec.task_id,
                        ", ".join(spec.return_ids))
        self.tasklog.submitted(list(specs.values()))
        # Inputs rebuilt after their release are freed again once used.
        self._feed(events + [ev.TaskSubmitted(spec, rebuild=True) for spec in specs.values()]
                   + ([ev.ObjectsReleased(tuple(released))] if released else []))

    def _plan_rebuild(self, object_id, why, events, specs, released):
        spec = self.lineage.get(object_id)
        status = self.scheduler.object_status(object_id)
        if spec is None or spec.max_retries == 0:
            if status is not None:
                reason = "it was stored by put" if spec is None else "its task has max_retries=0"
                failure = Failure("object_lost", f"object {object_id} was lost ({why}) and cannot be rebuilt: "
                                                 f"{reason}")
                self.store.put(object_id, Failed(failure))
                events.append(ev.ObjectLost(object_id, failure))
            return
        if spec.task_id in specs:
            return
        self.store.delete(object_id)  # whoever asks now waits for the rebuilt value
        if status is not None:
            events.append(ev.ObjectLost(object_id))
        else:
            released.append(object_id)
        for dep in spec.dependencies:  # inputs gone too: rebuild them first
            entry = self.store.lookup(dep)
            if (entry is None or (type(entry) is Remote and not entry.holders)) and dep in self.lineage:
                self._plan_rebuild(dep, why, events, specs, released)
        specs[spec.task_id] = spec

    def worker_blocked(self, worker_id, object_ids=()):
        """``object_ids``: what its get waits for, all of them (empty when the
        wait may end early): the scheduler may have the worker run their
        producers itself."""
        self._feed([ev.WorkerBlocked(worker_id, tuple(dict.fromkeys(map(task_of, object_ids))), time.monotonic())])

    def tick(self, now):
        """Time passed (``scheduler.next_deadline()`` is due)."""
        self._feed([ev.Tick(now)])

    def worker_unblocked(self, worker_id):
        self._feed([ev.WorkerUnblocked(worker_id)])

    # ------------------------------------------------------------- node side
    def node_joined(self, node_id, resources, base_workers, address=None, pipeline=False):
        self._feed([ev.NodeJoined(node_id, dict(resources), base_workers, address, pipeline)])

    def node_lost(self, node_id, reason):
        self._feed([ev.NodeLost(node_id, reason)])
        self.holder_lost(node_id, f"node {node_id} lost: {reason}")

    def holder_lost(self, holder_id, why):
        """The copies a node (or a driver) held are gone with it."""
        self.holders.pop(holder_id, None)
        if self.closing:
            return
        lost = []
        for object_id in self.held.pop(holder_id, ()):
            entry = self.store.lookup(object_id)
            if type(entry) is Remote:
                entry.holders = tuple(h for h in entry.holders if h.node_id != holder_id)
                if not entry.holders:
                    lost.append(object_id)
        if lost:
            self._lose(sorted(lost), why)

    def worker_joined(self, worker_id, node_id):
        self._feed([ev.WorkerJoined(worker_id, node_id)])

    def worker_lost(self, worker_id, reason):
        self._feed([ev.WorkerLost(worker_id, reason)])
        self.owners_gone(["w:" + worker_id])  # (the peer id a worker process speaks as)

    def later(self, event):
        """Queue an event raised while carrying out a command (no re-entry)."""
        self._later.append(event)

    # ------------------------------------------------------------- internals
    def _feed(self, events):
        commands = self.scheduler.handle_all(events)
        self._carry_out(commands)
        while self._later:
            events = list(self._later)
            self._later.clear()
            self._carry_out(self.scheduler.handle_all(events))
        self.transport.flush()

    def _carry_out(self, commands):
        transport = self.transport
        store = self.store
        tasklog = self.tasklog
        now = time.time()
        for command in commands:
            kind = type(command)
            if kind is cmd.Dispatch:
                spec = command.spec
                inputs = {dep: store.lookup(dep) for dep in spec.dependencies} if spec.dependencies else None
                transport.dispatch(command.worker_id, spec, inputs, self.functions[spec.payload.function_id],
                                   command.nested)
                tasklog.dispatched(spec, command.worker_id, command.node_id, now)
            elif kind is cmd.Publish:
                tasklog.finished(command.task_id, now)
                values = self._results.pop(command.task_id)
                producer = self._producers.pop(command.task_id, None) if self._producers else None
                if producer is not None:
                    self._record_large(command.return_ids, values, *producer)
                if self._result_refs:
                    for container_id, object_ids in self._result_refs.pop(command.task_id, ()):
                        self.nested.contained(container_id, tuple(object_ids))
                self._store_all(command.return_ids, values, command.task_id)
                if self.nested.by_task:
                    self._let_go(self.nested.task_ended(command.task_id))
            elif kind is cmd.FailTask:
                tasklog.failed(command.task_id, command.failure, now)
                failed = Failed(command.failure)
                self._store_all(command.return_ids, [failed] * len(command.return_ids), command.task_id)
                if self.nested.by_task:
                    self._let_go(self.nested.task_ended(command.task_id))
            elif kind is cmd.Retry:
                tasklog.retried(command.task_id, now)
                log.info("retrying task %s (attempt %d): %s", command.task_id, command.attempt, command.reason)
            elif kind is cmd.InterruptTask:
                transport.interrupt(command.worker_id, command.task_id, command.force)
            elif kind is cmd.RecallTasks:
                transport.recall(command.worker_id, command.task_ids)
            elif kind is cmd.StartWorker:
                transport.start_worker(command.node_id)
            elif kind is cmd.StopWorker:
                transport.stop_worker(command.worker_id)
            elif kind is cmd.ReleaseObject:
                object_id = command.object_id
                entry = store.lookup(object_id)
                if type(entry) is Remote:
                    self._free_copies(object_id, entry)
                store.delete(object_id)
                self.owners.pop(object_id, None)
                self._drop_lineage(object_id)
                if self.nested.containers:
                    self._let_go(self.nested.container_freed(object_id))

    # ------------------------------------------------- large values, lineage
    def _record_large(self, return_ids, values, spec, node_id):
        """Index the large results of a finished task by their holder, and keep
        the task's spec (its lineage) while they are referenced."""
        held = self.held.setdefault(node_id, set())
        for object_id, value in zip(return_ids, values):
            if type(value) is Remote:
                held.add(object_id)
                self.later(ev.ObjectLocated(object_id, node_id, value.size))
                if spec is not None and object_id not in self.lineage:
                    self.lineage[object_id] = spec
                    for dep in spec.dependencies:
                        self._lineage_uses[dep] = self._lineage_uses.get(dep, 0) + 1
                    if spec.payload.holds:  # a re-run needs the refs inside its arguments
                        self.nested.lineage_kept(spec.payload.holds)

    def _drop_lineage(self, object_id):
        """``object_id`` was released. Its spec goes unless a kept lineage
        takes it as input (then it may be needed to rebuild that one)."""
        if self._lineage_uses.get(object_id, 0) > 0:
            return
        stack = [object_id]
        while stack:
            spec = self.lineage.pop(stack.pop(), None)
            if spec is None:
                continue
            if spec.payload.holds:
                self._let_go(self.nested.lineage_dropped(spec.payload.holds))
            for dep in spec.dependencies:
                uses = self._lineage_uses.get(dep, 0) - 1
                if uses > 0:
                    self._lineage_uses[dep] = uses
                    continue
                self._lineage_uses.pop(dep, None)
                if dep not in self.store and self.scheduler.object_status(dep) is None:
                    stack.append(dep)  # released already: nothing keeps its lineage now

    def _let_go(self, object_ids):
        """Releases that waited for the tasks (or lineage) holding these objects."""
        if object_ids:
            self.later(ev.ObjectsReleased(tuple(object_ids)))

    def _free_copies(self, object_id, entry):
        for holder in entry.holders:
            self.held.get(holder.node_id, set()).discard(object_id)
            self.transport.free(holder.node_id, [object_id])

    def _store_all(self, object_ids, entries, task_id=None):
        self.store.put_many(zip(object_ids, entries))
        deliver = self.transport.deliver
        owners, subscribers = self.owners, self.subscribers
        rebuilt = task_id in self._rebuilding if self._rebuilding else False
        if rebuilt:
            # The owner got the first values already (and counted the task
            # done): only those who asked again get the new ones.
            self._rebuilding.discard(task_id)
            owners = {}
        for object_id, entry in zip(object_ids, entries):
            owner = owners.get(object_id)
            if owner is not None:
                deliver(owner, object_id, entry)
                if object_id.endswith("0001"):  # the first return of a task: it is done
                    self.unfinished_by_owner[owner] -= 1
            peers = subscribers.pop(object_id, None)
            if peers:
                for peer in peers:
                    if peer != owner:
                        deliver(peer, object_id, entry)
