"""The in-process transport: the same ``Head`` and scheduler, worker threads, no sockets.

One lock guards the head; the driver and every worker thread call it under
that lock, so there is no scheduler thread and no hand-off on the submit or
completion path. Each worker thread has an inbox queue; a dispatch is one
queue put. Values are passed by reference (arguments are still checked for
picklability at the call, so code that works here works on a cluster).

Worker threads pipeline as worker processes do: the scheduler queues tiny
tasks behind a busy worker (``PIPELINE_DEPTH``, sized by run time), the
thread runs what its inbox holds back to back and reports it with one
acquisition of the lock. Taking the lock once per task made the three threads
of a two-worker runtime hand the lock (and the GIL) to each other for every
task. What comes with pipelining comes here too: a worker sends back what is
queued on it before its task waits in ``get``, and gives up queued tasks the
scheduler recalls (a timer thread feeds the scheduler's ``Tick``).
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import queue
import threading
import time

import cloudpickle

from .. import context, execution
from ..client import Client
from ..head import Head
from ..object_ref import ObjectRef
from ..scheduler.events import Failure, TaskRejected, WorkerLost
from ..scheduler.state import PIPELINE_BUDGET
from .base import PIPELINE_DEPTH, HeadTransport

log = logging.getLogger("orion.inproc")

NODE_ID = "inproc"
# A worker thread reports the tasks it ran back to back after this many, or
# once they took this many seconds (the scheduler queues about that much work
# behind a busy worker: PIPELINE_BUDGET), whichever comes first.
REPORT_EVERY = 64
REPORT_AFTER = PIPELINE_BUDGET
_PLAIN_TYPES = (int, float, str, bytes, bool, type(None), ObjectRef)


def check_picklable(value, what):
    """Raise a TypeError naming ``what`` when ``value`` cannot be pickled."""
    if type(value) in _PLAIN_TYPES:
        return
    try:
        cloudpickle.dumps(value, protocol=5, buffer_callback=lambda buffer: None)
    except Exception as exc:
        raise TypeError(f"{what} cannot be pickled, so it cannot be sent to a task: "
                        f"{type(exc).__name__}: {exc}") from exc


class InprocWorker(threading.Thread):
    """A worker thread: takes dispatches from its inbox and runs them."""

    def __init__(self, runtime, worker_id):
        super().__init__(name=f"orion-worker-{worker_id}", daemon=True)
        self.runtime = runtime
        self.worker_id = worker_id
        self.inbox = queue.SimpleQueue()
        self.abandoned = False  # force-cancelled: its result no longer counts
        self._state = threading.Lock()
        self._task_id = None
        self._in_runtime = 0  # > 0 while in Orion's own code: no async exceptions there
        self._interrupted = False
        self._blocking_event = None
        # Cancels of tasks dispatched to this worker that it has not started
        # yet (still in the inbox): they must not run at all.
        self._early_interrupts = set()
        self._stopping = False  # shutdown: run nothing more
        # task id -> the dispatch in the inbox that may still run it: a task
        # sent back (recalled, or handed back before a get) leaves it, and
        # its stale inbox entry is skipped, even if the task comes back here.
        self._unstarted = {}
        self._finished = []  # [(task id, Outcome, times)] run since the last report, in order

    # -- called from other threads -------------------------------------------
    def interrupt(self, task_id):
        """Raise KeyboardInterrupt in the task, or wake it if it waits in get."""
        with self._state:
            if task_id is None:
                return
            if self._task_id != task_id:
                self._early_interrupts.add(task_id)
                return
            self._interrupted = True
            if self._blocking_event is not None:
                self._blocking_event.set()
            elif not self._in_runtime:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident),
                                                           ctypes.py_object(KeyboardInterrupt))

    def stop(self):
        """Shutdown: interrupt the running task (if any) and run no other."""
        with self._state:
            self._stopping = True
            task_id = self._task_id
        self.interrupt(task_id)
        self.inbox.put(None)

    # -- used by the client while this thread runs a task ----------------------
    @contextlib.contextmanager
    def guard(self):
        with self._state:
            self._in_runtime += 1
        try:
            yield
        finally:
            with self._state:
                self._in_runtime -= 1

    def wait_interruptibly(self, store, object_ids, num_ready, timeout):
        def register(event):
            with self._state:
                self._blocking_event = event
                if self._interrupted:
                    event.set()

        with self.guard():
            try:
                ready = store.wait(object_ids, num_ready, timeout, interrupt=register)
            finally:
                with self._state:
                    self._blocking_event = None
            interrupted = self._interrupted
        if interrupted:
            raise KeyboardInterrupt("task cancelled while waiting in get")
        return ready

    def dispatched(self, item):
        """(Head lock held.) ``item`` goes into the inbox, and may run."""
        with self._state:
            self._unstarted[item[0].task_id] = item
        self.inbox.put(item)

    def recall(self, task_ids):
        """(Head lock held, carrying out the scheduler's commands.) Give up
        those of ``task_ids`` not started yet: the head hears of each with
        ``TaskRejected`` once its current commands are done."""
        with self._state:
            recalled = [task_id for task_id in task_ids if self._unstarted.pop(task_id, None) is not None]
        for task_id in recalled:
            self.runtime.head.later(TaskRejected(task_id, self.worker_id))

    def hand_back_locked(self):
        """(Head lock held; this thread, its task about to wait in get.) Report
        what ran before it and send back what is queued behind it: the task
        may be waiting for those very tasks."""
        self._report_locked()
        with self._state:
            queued, self._unstarted = list(self._unstarted), {}
        for task_id in queued:
            self.runtime.head.task_rejected(self.worker_id, task_id)

    # -- the thread ------------------------------------------------------------
    def run(self):
        context.current.worker = self
        runtime = self.runtime
        with runtime.lock:
            runtime.head.worker_joined(self.worker_id, NODE_ID)
            runtime.arm_timer_locked()
        item = self.inbox.get()
        while item is not None:
            # Run what the inbox holds back to back, then report it all at once:
            # at most REPORT_EVERY tasks or REPORT_AFTER seconds of them, so that
            # a long task's result never waits for the one queued behind it.
            stop_at, count = time.monotonic() + REPORT_AFTER, 0
            while True:
                self._run_item(item)
                if self.abandoned:
                    return
                count += 1
                # (This thread alone takes from its inbox: not empty, it has an item.)
                if count >= REPORT_EVERY or self.inbox.empty() or time.monotonic() >= stop_at:
                    item = False
                    break
                item = self.inbox.get_nowait()
                if item is None:
                    break
            with runtime.lock:
                self._report_locked()
                runtime.arm_timer_locked()
            if item is False:
                item = self.inbox.get()

    def _run_item(self, item):
        started = time.time()
        outcome = self._run_one(item)
        if outcome is not None:
            self._finished.append((item[0].task_id, outcome, (started, max(started, time.time()))))

    def _report_locked(self):
        """Tell the head of the tasks run since the last report, in the order they ran."""
        finished, self._finished = self._finished, []
        if not finished or self.abandoned:
            return
        head, at, done = self.runtime.head, time.monotonic(), []
        for task_id, outcome, times in finished:
            if outcome.failure is None:
                done.append((task_id, outcome.values, times, ()))
                continue
            if done:
                head.tasks_done(self.worker_id, done, at=at)
                done = []
            head.task_failed(self.worker_id, task_id, outcome.failure, outcome.retryable,
                             outcome.cancelled, times, at=at)
        if done:
            head.tasks_done(self.worker_id, done, at=at)
        with self._state:  # cancels that came after their tasks returned
            for task_id, _, _ in finished:
                self._early_interrupts.discard(task_id)

    def _run_one(self, item):
        """The task's ``Outcome``; None when it is no longer this worker's to run."""
        spec, inputs, function = item
        record = spec.payload
        try:
            with self._state:
                if self._unstarted.get(spec.task_id) is not item:
                    return None  # sent back since (it may run elsewhere, or later here)
                del self._unstarted[spec.task_id]
                if spec.task_id in self._early_interrupts or self._stopping:  # cancelled before it started
                    self._early_interrupts.discard(spec.task_id)
                    return execution.Outcome(failure=Failure("cancelled", f"task {spec.name} was cancelled"),
                                             cancelled=True)
                self._task_id = spec.task_id
                self._interrupted = False
            args, kwargs = execution.resolve_args(*record.args, inputs)
            outcome = execution.run(function, args, kwargs, record.num_returns, record.retry_exceptions,
                                    spec.name)
            with self._state:
                self._task_id = None
            return outcome
        except KeyboardInterrupt:  # a cancel that landed just outside the function
            with self._state:
                self._task_id = None
            return execution.Outcome(failure=Failure("cancelled", f"task {spec.name} was cancelled"),
                                     cancelled=True)


class InprocTransport(HeadTransport):
    def __init__(self, runtime):
        self.runtime = runtime
        self.workers = {}
        self._numbers = itertools.count(1)

    def new_worker(self):
        if self.runtime.closed:
            return
        worker = InprocWorker(self.runtime, f"{NODE_ID}-w{next(self._numbers)}")
        self.workers[worker.worker_id] = worker
        worker.start()  # it announces itself with worker_joined under the head lock

    def dispatch(self, worker_id, spec, inputs, function, nested=False):
        # (nested never comes: these workers do not say what they wait for)
        worker = self.workers.get(worker_id)
        if worker is not None:  # None: the runtime was shut down
            worker.dispatched((spec, inputs, function))

    def interrupt(self, worker_id, task_id, force):
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        worker.interrupt(task_id)
        if force:
            # Threads cannot be killed: abandon this one (its result is
            # ignored, it exits when the task returns) and start a fresh one.
            worker.abandoned = True
            del self.workers[worker_id]
            self.runtime.head.later(WorkerLost(worker_id, "killed by cancel(force=True)"))
            self.new_worker()

    def recall(self, worker_id, task_ids):
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.recall(task_ids)

    def start_worker(self, node_id):
        self.new_worker()

    def stop_worker(self, worker_id):
        worker = self.workers.pop(worker_id, None)
        if worker is not None:
            worker.inbox.put(None)

    def deliver(self, peer_id, object_id, entry):
        pass  # the client reads the head's own store

    def flush(self):
        pass


class InprocRuntime:
    """The whole cluster in this process: a head, one node, N worker threads,
    and a timer thread that feeds the scheduler's ``Tick`` when it asks
    (``Scheduler.next_deadline``: recalls)."""

    def __init__(self, num_workers, resources=None, policy="least_loaded"):
        self.lock = threading.Lock()
        self.closed = False
        self.transport = InprocTransport(self)
        self.head = Head(self.transport, policy, adaptive_pipelining=True)
        self._timer_wake = threading.Condition(self.lock)
        self._timer_due = None  # when the timer thread is to feed the next Tick (monotonic clock)
        self._timer = threading.Thread(target=self._run_timer, name="orion-inproc-timer", daemon=True)
        self._timer.start()
        node_resources = {"CPU": float(num_workers)}
        node_resources.update({k: float(v) for k, v in (resources or {}).items()})
        with self.lock:
            self.head.node_joined(NODE_ID, node_resources, num_workers, address=None, pipeline=PIPELINE_DEPTH)
            for _ in range(num_workers):
                self.transport.new_worker()

    def arm_timer_locked(self):
        """(Head lock held.) After a worker's call: wake the timer thread if
        the scheduler now wants a Tick sooner than it was told."""
        due = self.head.scheduler.next_deadline()
        if due is not None and (self._timer_due is None or due < self._timer_due):
            self._timer_due = due
            self._timer_wake.notify()

    def _run_timer(self):
        with self.lock:
            while not self.closed:
                due = self._timer_due
                if due is None:
                    self._timer_wake.wait()
                    continue
                delay = due - time.monotonic()
                if delay > 0:
                    self._timer_wake.wait(delay)
                    continue
                self._timer_due = None
                self.head.tick(time.monotonic())
                self.arm_timer_locked()

    def shutdown(self):
        with self.lock:
            self.closed = True
            self._timer_wake.notify()
            workers = list(self.transport.workers.values())
            self.transport.workers.clear()
        for worker in workers:
            worker.stop()
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(timeout=2.0)
        if self._timer is not threading.current_thread():
            self._timer.join(timeout=2.0)


class InprocClient(Client):
    """The driver of the in-process runtime: calls the head under its lock."""

    address = None
    # Arguments and values stay the objects they are: an ObjectRef inside one
    # keeps its object alive by itself (its death is what releases it).
    nested_refs_travel = False

    def __init__(self, num_workers, resources=None, policy="least_loaded"):
        self.runtime = InprocRuntime(num_workers, resources, policy)
        super().__init__(self.runtime.head.store)
        self._known_functions = set()

    def _send_submit(self, specs, remote_function):
        head = self.runtime.head
        with self.runtime.lock:
            if remote_function._function_id not in self._known_functions:
                self._known_functions.add(remote_function._function_id)
                head.register_function(remote_function._function_id, remote_function._function)
            head.submit(specs)

    def _send_put(self, object_id, value):
        with self.runtime.lock:
            self.runtime.head.put(self.peer_id, object_id, value)

    def _request(self, object_ids):
        head = self.runtime.head
        with self.runtime.lock:
            for object_id in object_ids:
                if not head.knows(object_id):
                    self.store.put(object_id, _lost(object_id))

    def _blocked(self, worker_id, blocked, waits=()):
        # (waits go unsaid: a worker thread cannot run tasks inside its get)
        runtime = self.runtime
        with runtime.lock:
            if blocked:
                worker = runtime.transport.workers.get(worker_id)
                if worker is not None:
                    worker.hand_back_locked()
                runtime.head.worker_blocked(worker_id)
            else:
                runtime.head.worker_unblocked(worker_id)
            runtime.arm_timer_locked()

    def _release_local(self, object_ids):
        pass  # the store is the head's: the head frees them once no task needs them

    def _send_release(self, released, borrowed, unborrowed, contained):
        # (only releases come here: nothing is borrowed or contained in-process)
        with self.runtime.lock:
            self.runtime.head.release(released)

    def _send_cancel(self, task_id, force):
        with self.runtime.lock:
            self.runtime.head.cancel(task_id, force)

    def _encode_args(self, args, kwargs, task_name):
        for i, value in enumerate(args):
            check_picklable(value, f"argument {i} of {task_name}")
        for key, value in kwargs.items():
            check_picklable(value, f"argument {key!r} of {task_name}")
        return args, kwargs

    def _encode_value(self, value):
        check_picklable(value, "the value given to put")  # (under put's recording: no ref escapes)
        return value

    def nodes(self):
        from ..observe.state import node_table_locked

        with self.runtime.lock:
            return node_table_locked(self.runtime.head, self.runtime.head.scheduler.nodes())

    def timeline_records(self):
        self._check_open()
        with self.runtime.lock:
            return self.runtime.head.tasklog.records()

    def shutdown(self):
        if self.closed:
            return
        super().shutdown()
        self.runtime.shutdown()


def _lost(object_id):
    from ..object_store import Failed

    return Failed(Failure("object_lost", f"object {object_id} is not known to this cluster (it may belong "
                                         "to a cluster that was shut down, or it was freed)"))


__all__ = ["InprocClient", "InprocRuntime", "InprocTransport"]
