"""The head: the scheduler plus the tables around it, behind a transport.

``Head`` turns what peers say (submit, put, task done, worker joined, ...)
into scheduler events, and carries out the scheduler's commands through a
``HeadTransport``: it attaches input values and functions to dispatches,
stores results and failures, and delivers them to the tasks' owners and to
whoever asked. It is single-threaded: the in-process runtime calls it under
one lock, the ZeroMQ head from its one socket thread. Both runtimes use this
same class, so every scheduling rule lives in exactly one place.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque

from .object_store import Failed, ObjectStore
from .observe.tasklog import TaskLog
from .scheduler import commands as cmd
from .scheduler import events as ev
from .scheduler.events import Failure
from .scheduler.state import Scheduler

log = logging.getLogger("orion.head")

# Twice a well-behaved client's own limit (Client.max_unfinished): only a peer
# that ignores back-pressure ever reaches it.
MAX_UNFINISHED_PER_OWNER = int(os.environ.get("ORION_MAX_UNFINISHED_PER_OWNER", 200_000))


class TaskRecord:
    """The runtime half of a task, carried opaquely as ``TaskSpec.payload``."""

    __slots__ = ("function_id", "args", "num_returns", "retry_exceptions", "owner")

    def __init__(self, function_id, args, num_returns, retry_exceptions, owner):
        self.function_id = function_id
        self.args = args  # (args, kwargs) in-process; serialized frames over the wire
        self.num_returns = num_returns
        self.retry_exceptions = retry_exceptions
        self.owner = owner  # peer id of the client that submitted it


class Head:
    def __init__(self, transport, policy="least_loaded", store=None):
        self.transport = transport
        self.scheduler = Scheduler(policy)
        self.store = store if store is not None else ObjectStore()
        self.functions = {}  # function id -> function (object or pickled blob)
        self.owners = {}  # object id -> peer that submitted (or put) it
        self.subscribers = {}  # object id -> set of peers that asked for it
        self.unfinished_by_owner = {}  # peer -> its tasks not finished yet (bounded)
        self.max_unfinished_per_owner = MAX_UNFINISHED_PER_OWNER
        self.tasklog = TaskLog()  # per-task times and per-name counts (orion.observe)
        self._results = {}  # task id -> values reported, until the scheduler accepts them
        self._later = deque()  # events raised while carrying out commands

    # ----------------------------------------------------------- client side
    def register_function(self, function_id, function):
        self.functions.setdefault(function_id, function)

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
            accepted.append(spec)
        self.tasklog.submitted(accepted)
        self._feed([ev.TaskSubmitted(spec) for spec in accepted])

    def _refuse(self, spec, message):
        failed = Failed(Failure("unschedulable", message))
        for return_id in spec.return_ids:  # told to the owner only: nothing is kept
            self.transport.deliver(spec.payload.owner, return_id, failed)

    def put(self, peer, object_id, value):
        self.store.put(object_id, value)
        self.owners[object_id] = peer
        self._feed([ev.ObjectPut(object_id)])

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
        self._feed([ev.ObjectsReleased(tuple(object_ids))])

    # ----------------------------------------------------------- worker side
    def task_done(self, worker_id, task_id, values, times=None):
        """``times``: ``(started, finished)`` wall-clock seconds, as the worker ran it."""
        if times is not None:
            self.tasklog.reported(worker_id, task_id, times)
        self._results[task_id] = values
        self._feed([ev.TaskFinished(task_id, worker_id)])
        self._results.pop(task_id, None)  # not accepted: a stale or cancelled attempt

    def task_failed(self, worker_id, task_id, failure, retryable=False, cancelled=False, times=None):
        if times is not None:
            self.tasklog.reported(worker_id, task_id, times)
        self._feed([ev.TaskErrored(task_id, worker_id, failure, retryable, cancelled)])

    def task_rejected(self, worker_id, task_id):
        self._feed([ev.TaskRejected(task_id, worker_id)])

    def worker_blocked(self, worker_id):
        self._feed([ev.WorkerBlocked(worker_id)])

    def worker_unblocked(self, worker_id):
        self._feed([ev.WorkerUnblocked(worker_id)])

    # ------------------------------------------------------------- node side
    def node_joined(self, node_id, resources, base_workers, address=None, pipeline=False):
        self._feed([ev.NodeJoined(node_id, dict(resources), base_workers, address, pipeline)])

    def node_lost(self, node_id, reason):
        self._feed([ev.NodeLost(node_id, reason)])

    def worker_joined(self, worker_id, node_id):
        self._feed([ev.WorkerJoined(worker_id, node_id)])

    def worker_lost(self, worker_id, reason):
        self._feed([ev.WorkerLost(worker_id, reason)])

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
                transport.dispatch(command.worker_id, spec, inputs, self.functions[spec.payload.function_id])
                tasklog.dispatched(spec, command.worker_id, command.node_id, now)
            elif kind is cmd.Publish:
                tasklog.finished(command.task_id, now)
                values = self._results.pop(command.task_id)
                self._store_all(command.return_ids, values)
            elif kind is cmd.FailTask:
                tasklog.failed(command.task_id, command.failure, now)
                failed = Failed(command.failure)
                self._store_all(command.return_ids, [failed] * len(command.return_ids))
            elif kind is cmd.Retry:
                tasklog.retried(command.task_id, now)
                log.info("retrying task %s (attempt %d): %s", command.task_id, command.attempt, command.reason)
            elif kind is cmd.InterruptTask:
                transport.interrupt(command.worker_id, command.task_id, command.force)
            elif kind is cmd.StartWorker:
                transport.start_worker(command.node_id)
            elif kind is cmd.StopWorker:
                transport.stop_worker(command.worker_id)
            elif kind is cmd.ReleaseObject:
                store.delete(command.object_id)
                self.owners.pop(command.object_id, None)

    def _store_all(self, object_ids, entries):
        self.store.put_many(zip(object_ids, entries))
        deliver = self.transport.deliver
        owners, subscribers = self.owners, self.subscribers
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
