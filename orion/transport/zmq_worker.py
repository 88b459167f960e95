"""A worker process: runs tasks that the head dispatches to it.

Started by its node (``python -m orion.transport.zmq_worker ADDRESS WORKER_ID
NODE_ID``). One thread owns one DEALER socket to the head (identity
``w:<worker id>``): it receives a dispatch, runs the task, sends the result.
Functions arrive pickled once and are cached by id. Inside a task the same
socket serves ``orion.get``/``.remote`` (the worker is also a client), so a
nested ``get`` tells the head the worker is blocked (and what it waits for)
and waits on the socket. Meanwhile the head may send it the very tasks it
waits for (``help``): the worker runs them right there, inside the ``get``,
one level of a stack per waiting task (see "Helping" in the scheduler).

Cancellation arrives from the node (``interrupt <task id>`` on stdin, read
by a thread of its own, which signals SIGINT): it raises KeyboardInterrupt in
the task, unless the worker is inside Orion's own code, where it is noted and
raised at the way out. A recall (``recall <task id>...``, see "Recall" in the
scheduler) takes back tasks queued here that have not started; the answer
goes to the node on a pipe of its own (the socket belongs to the thread
running the task). The worker exits when its stdin (a pipe from the node)
closes: a dead node leaves no orphan workers.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import sys
import threading
import time

import cloudpickle
import zmq

from .. import api, context, execution, gc_tuning, ids, security, serialization
from ..client import SCALARS
from ..object_ref import LIFETIMES
from ..object_store import Holder, ObjectStore, Remote
from ..store import mappings
from ..store.access import INLINE_MAX, LocalNode, ObjectAccess, ObjectUnavailable, serialized_size
from ..scheduler.events import Failure
from . import protocol, wire
from .frames import recv_frames, send_frames
from .logs import decode_peer_records
from .protocol import ProtocolError
from .task_output import TaskOutput, install_logging
from .wire_client import SerializingClient

# A worker with nothing to run hands over the releases its tasks left after
# this long without a message (until then they wait for its next call).
IDLE_RELEASE_MS = 5

log = logging.getLogger("orion.worker")

_DONE_BATCH = 64  # finished tasks per ``done`` message, at most


class WorkerClient(SerializingClient):
    """The client API inside a worker process, over the worker's own socket."""

    def __init__(self, worker):
        super().__init__(ObjectStore())
        self.worker = worker
        self.peer_id = "w:" + worker.worker_id
        self.address = worker.address

    def _send_submit(self, specs, remote_function):
        body, frames = self._submit_message(specs, remote_function)
        self.worker.children.update(spec.task_id for spec in specs)  # their output comes to us
        self.worker.send("submit", body, frames)
        self._functions_sent(body[0])

    def _put_inline(self, object_id, value):
        header, buffers = value
        self.store.put(object_id, value)
        self.worker.send("put", [object_id, header, len(buffers)], buffers)

    def _put_large(self, object_id, value):
        local = self.worker.local
        if local is None:
            return False
        size = local.write(object_id, *value)
        self.store.put(object_id, Remote(size, (Holder(local.node_id, ""),)))
        self.worker.send("put", [object_id, None, size])
        return True

    def _send_lost(self, object_id, holder_ids):
        self.worker.send("lost", [object_id, list(holder_ids)])

    def _keep_copy(self, object_id, keep):
        self.worker._seal(object_id, keep())
        self.worker.send("copied", [[object_id]])

    def _request(self, object_ids):
        self.worker.send("subscribe", [list(object_ids)])

    def _blocked(self, worker_id, blocked, waits=()):
        self.worker.set_blocked(blocked, waits)

    def _send_cancel(self, task_id, force):
        self.worker.send("cancel", [task_id, force])

    def _send_release(self, released, borrowed, unborrowed, contained):
        self.worker.send("release", [list(released), list(borrowed), list(unborrowed), list(contained)])

    def nodes(self):
        self.worker.send("nodes", [0])
        return self.worker.wait_reply("nodes_reply")


class Worker:
    def __init__(self, address, worker_id, node_id):
        self.address = address
        self.worker_id = worker_id
        self.node_id = node_id
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, b"w:" + worker_id.encode())
        keys = security.load(None)  # the node hands its keys down through ORION_KEYS
        if keys is not None:
            keys.as_client(self.socket)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)
        self.functions = {}
        self._function_blobs = {}  # function id -> pickled function, received but not loaded yet
        # Large values: this node's store (mapped directly) and other nodes' (fetched).
        self._store_socket = None  # DEALER to the node's object server, for seal notes
        self._copying = None  # (thread, ids done): copies of fetched inputs being written
        self._seals = []  # [object id, size] written into the node's store, not told yet
        # Tasks run back to back from the local queue report together: one
        # ``done`` for all of them when the queue runs dry (or every _DONE_BATCH).
        self._dones, self._done_frames = [], []
        self.local = LocalNode.from_environment(node_id, self._seal)
        self.objects = ObjectAccess(self.context, keys, self.local, keep_copies=True)
        self.client = WorkerClient(self)
        self.client.objects = self.objects
        self._task_id = None
        self._in_runtime = 0
        self._polling = False
        self._interrupted = False
        self._interrupt_raised = False
        self._replies = {}
        self._queue = collections.deque()  # dispatched tasks not started yet (pipelining)
        # Helping: one deque per get in progress, innermost last, of the tasks
        # the head sent to run inside it; and the ids of the tasks suspended
        # under the one running (their gets are in progress), with the cancels
        # that came for them meanwhile.
        self._levels = []
        self._suspended = []
        self._suspended_cancels = set()
        self._nested_values = None  # results of the task just run inside a get, for that get
        # (task id, name) of the task whose get each nested run is inside (None:
        # it captured no output): what a nested task prints is that task's output.
        self._waiting_outputs = []
        self._in_get = False
        self._cancel_lock = threading.Lock()  # orders task start/end against interrupts
        self._early_cancels = set()  # tasks cancelled before this worker started them
        # Recall (see recall): the tasks this worker dealt with lately (taken off
        # its queue to run, or sent back: the head asks back only tasks among the
        # last it sent us, at most a pipeline deep; never those sent to run inside
        # a get), those given back before they arrived, and where the answers go:
        # a pipe to our node.
        self._handled = collections.deque(maxlen=_HANDLED_KEPT)
        self._recalled = set()
        reply_fd = os.environ.get("ORION_NODE_REPLY_FD")
        self._reply_fd = int(reply_fd) if reply_fd and reply_fd.isdigit() else None
        # What the running task prints goes to its owner (see task_output); so
        # does what its children print, which the head forwards to us.
        self.output = TaskOutput(on_full=self._send_logs_now)
        self.children = set()  # tasks submitted by the running task
        self._sending_logs = False
        self._thread_id = threading.get_ident()  # the thread that owns the socket

    # ---------------------------------------------------------- socket
    def send(self, msg_type, body=(), buffers=()):
        send_frames(self.socket, protocol.encode(msg_type, body, buffers))

    def _receive(self, timeout_ms=None):
        """Handle one incoming message; returns False on timeout."""
        if timeout_ms is not None and not self.socket.poll(timeout_ms):
            return False
        frames = protocol.frames_of(recv_frames(self.socket))  # buffers: no copy
        try:
            msg_type, body, buffers = protocol.decode(frames)
            if msg_type == "dispatch" or msg_type == "help":
                # "help": tasks our waiting task waits for: run them inside its get
                # (after that get they run as any other task; see wait_interruptibly).
                helping = msg_type == "help"
                target = self._levels[-1] if helping and self._levels else self._queue
                dispatches = [wire.decode_dispatch(record, buffers) for record in body[0]]
                for dispatch in dispatches:
                    if dispatch[3] is not None:
                        # The head sends a function once per worker: keep it even
                        # if this task is sent back unstarted.
                        self._function_blobs.setdefault(dispatch[2], dispatch[3])
                # Our task waits in get: a task queued behind it could be what
                # it waits for. Send it back to run elsewhere.
                sending_back = self._in_get and not helping
                with self._cancel_lock:  # (see recall)
                    if self._recalled:
                        dispatches = [d for d in dispatches if not self._given_back_before(d[0])]
                    if sending_back:
                        self._handled.extend(d[0] for d in dispatches)
                    else:
                        target.extend(dispatches)
                if sending_back:
                    for dispatch in dispatches:
                        self.send("rejected", [dispatch[0]])
            elif msg_type == "objects":
                self.client.store.put_many(wire.decode_entries(body[0], buffers))
            elif msg_type == "logs":
                self._print_forwarded(decode_peer_records(body[0]))
            elif msg_type == "error":
                log.warning("the head says: %s", body[0])
            else:
                self._replies[msg_type] = body
        except ProtocolError as exc:
            log.warning("dropped a malformed message from the head: %s", exc)
        return True

    def wait_reply(self, msg_type, timeout=5.0):
        deadline = time.monotonic() + timeout
        while msg_type not in self._replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._receive(remaining * 1000):
                raise TimeoutError(f"the head did not answer {msg_type} in {timeout} s")
        return self._replies.pop(msg_type)[1]

    def _seal(self, object_id, size):
        """Note that we wrote ``object_id`` into our node's store; the node
        hears of it (to account and spill) when this worker next goes idle."""
        self._seals.append([object_id, size])

    def _flush_seals(self):
        if self._store_socket is None:
            self._store_socket = self.context.socket(zmq.DEALER)
            self._store_socket.setsockopt(zmq.LINGER, 1000)
            if self.objects.keys is not None:
                self.objects.keys.as_client(self._store_socket)
            self._store_socket.connect(os.environ["ORION_STORE_ADDRESS"])
        self._store_socket.send_multipart(protocol.encode("seal", [self._seals]))
        self._seals = []

    # ---------------------------------------------------------- task context (see orion.context)
    @contextlib.contextmanager
    def guard(self):
        self._in_runtime += 1
        try:
            yield
        finally:
            self._in_runtime -= 1
        self._raise_pending_interrupt()

    def _raise_pending_interrupt(self):
        if self._interrupted and not self._interrupt_raised and not self._in_runtime:
            self._interrupt_raised = True
            raise KeyboardInterrupt("task cancelled")

    def wait_interruptibly(self, store, object_ids, num_ready, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        ids = list(dict.fromkeys(object_ids))
        needed = len(ids) if num_ready is None else num_ready
        self._in_runtime += 1
        level = collections.deque()  # tasks the head sends us to run inside this get
        self._levels.append(level)
        try:
            if self._seals:
                self._flush_seals()
            while sum(1 for i in ids if i in store) < needed:
                if level:
                    while level:
                        self._run_nested(level.popleft())
                    self._report()
                    if self._interrupted:
                        break
                    continue
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if remaining == 0.0:
                    return False
                self._polling = True
                try:
                    self._receive(None if remaining is None else remaining * 1000)
                finally:
                    self._polling = False
                if self._interrupted:
                    break
            return True
        except KeyboardInterrupt:
            self._interrupt_raised = False
            return False
        finally:
            self._levels.pop()
            if level:
                # The head gave us these for this get, which ended early: they run
                # next, ahead of what the enclosing level has (the head expects so).
                target = self._levels[-1] if self._levels else self._queue
                target.extendleft(reversed(level))
            self._in_runtime -= 1
            self._raise_pending_interrupt()

    def _run_nested(self, dispatch):
        """Run a task inside the get of the task that waits for it: that task's
        per-task state is put aside and restored afterwards."""
        output = self.output
        waiting = (output.task_id, output.task_name) if output.active else None
        if waiting is not None:
            output.stop()
            if output.records:
                self._send_logs()
        saved = (self._task_id, self._interrupted, self._interrupt_raised, self._in_get, self._in_runtime,
                 self._polling, self.client.store, self.children, self._copying)
        self._suspended.append(self._task_id)
        self._nested_values = None
        self._waiting_outputs.append(waiting)
        self._in_get = self._polling = False
        self._in_runtime = 0
        self.children = set()
        self._copying = None
        try:
            self._run(dispatch)
        finally:
            self._suspended.pop()
            self._waiting_outputs.pop()
            with self._cancel_lock:
                (self._task_id, self._interrupted, self._interrupt_raised, self._in_get, self._in_runtime,
                 self._polling, self.client.store, self.children, self._copying) = saved
                if self._task_id in self._suspended_cancels:
                    self._suspended_cancels.discard(self._task_id)
                    self._interrupted = True  # cancelled while suspended: its get ends now
            if waiting is not None:
                output.start(*waiting)
        if self._nested_values:
            values, self._nested_values = self._nested_values, None
            self.client.store.put_many(values)  # (the head's copies, when they come, are the same)

    def watch_node(self):
        """Read the node's requests on stdin (``interrupt <task id>``, ``recall
        <task id>...``); exit when the node is gone (its end of the pipe closes)."""
        try:
            for line in sys.stdin.buffer:
                command, _, rest = line.decode("ascii", "replace").strip().partition(" ")
                if command == "interrupt":
                    self.request_interrupt(rest)
                elif command == "recall":
                    self.recall(rest.split())
        except (OSError, ValueError):
            pass
        os._exit(0)

    def recall(self, task_ids):
        """Give back those of ``task_ids`` queued here and not started: the
        node passes ``recalled <task id>...`` on to the head (this thread may
        not use the socket: the task running on the main thread owns it)."""
        if self._reply_fd is None:
            return  # no way to say so: keep them (they run here, later)
        recalled = []
        # The main thread receives, queues and starts tasks under this lock too.
        with self._cancel_lock:
            queued = {dispatch[0]: dispatch for dispatch in list(self._queue)}
            helping = {dispatch[0] for level in list(self._levels) for dispatch in list(level)}
            handled = set(self._handled)
            for task_id in task_ids:
                if task_id == self._task_id or task_id in handled or task_id in helping \
                        or task_id in self._suspended:
                    continue  # it runs, ran, went back already or runs inside a get here
                dispatch = queued.get(task_id)
                if dispatch is not None:
                    self._queue.remove(dispatch)
                else:
                    # Still on its way (we read the socket only between tasks):
                    # drop it when it comes.
                    if len(self._recalled) > 10_000:
                        self._recalled.clear()  # (ids that never came: cannot grow without bound)
                    self._recalled.add(task_id)
                recalled.append(task_id)
        if recalled:
            try:
                os.write(self._reply_fd, f"recalled {' '.join(recalled)}\n".encode())
            except OSError:
                pass  # the node is gone: so are we, in a moment (stdin closes)

    def _given_back_before(self, task_id):
        """Whether ``task_id`` was recalled before it came (it is then dropped)."""
        if task_id in self._recalled:
            self._recalled.discard(task_id)
            return True
        return False

    def _next_queued(self):
        """Take the next task queued here (pipelining), to run or to send back;
        None when there is none. It counts as dealt with from now on: ``recall``
        must not give back a task taken off the queue and about to start."""
        with self._cancel_lock:
            if not self._queue:
                return None
            dispatch = self._queue.popleft()
            self._handled.append(dispatch[0])
            return dispatch

    def request_interrupt(self, task_id):
        """Cancel ``task_id``: interrupt it if it runs, skip it if it has not started."""
        with self._cancel_lock:
            if self._task_id == task_id:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            elif task_id in self._suspended:
                self._suspended_cancels.add(task_id)  # it waits under a task we run for it
            else:
                if len(self._early_cancels) > 10_000:
                    self._early_cancels.clear()  # stale ids of long-finished tasks
                self._early_cancels.add(task_id)

    def _on_sigint(self, signum, frame):
        if self._task_id is None:
            return  # idle: a stray interrupt for a task that already ended
        self._interrupted = True
        if self._in_runtime and not self._polling:
            return  # raised on the way out of Orion's code (guard / wait_interruptibly)
        self._interrupt_raised = True
        raise KeyboardInterrupt("task cancelled")

    # ---------------------------------------------------------- tasks
    def _run(self, dispatch):
        try:
            self._run_task(dispatch)
        finally:
            if self._copying is not None:
                if self._dones:
                    # The task is done; keeping a copy of what it fetched is this
                    # node's business: the result need not wait for it.
                    self._send_dones()
                self._finish_copies()

    def _finish_copies(self):
        """Wait for the copies of fetched inputs to be in our node's store, then
        report them, so the head lists this node as a holder too."""
        thread, kept = self._copying
        self._copying = None
        thread.join()
        for object_id, size in kept:
            self._seal(object_id, size)
        if kept:
            self.send("copied", [[object_id for object_id, _ in kept]])

    def _run_task(self, dispatch):
        task_id, name, function_id, blob, num_returns, retry_exc, args, inputs = dispatch
        started = time.time()  # wall clock: lines up with the head's times (orion.timeline)
        self._interrupted = self._interrupt_raised = False
        with self._cancel_lock:
            skip = task_id in self._early_cancels
            self._early_cancels.discard(task_id)
            if not skip:
                self._task_id = task_id
        if skip:
            outcome = _cancelled(name)
        else:
            output = self.output
            output.start(task_id, name)
            try:
                inputs = self._read_inputs(task_id, inputs)
                # None: an input could not be had; the head was told and runs the task again later.
                outcome = None if inputs is None else \
                    self._execute(name, function_id, blob, num_returns, retry_exc, args, inputs)
                with self._cancel_lock:
                    self._task_id = None
            except KeyboardInterrupt:  # a cancel that landed just outside the function
                with self._cancel_lock:
                    self._task_id = None
                outcome = _cancelled(name)
            finally:
                if output.stop():
                    self._send_logs()  # before the result: output is printed before get returns
                if self.children:
                    self.children.clear()
        if not self.client.store.is_empty():
            self.client.store = ObjectStore()  # values fetched by this task are not kept
        if outcome is None:
            return
        if outcome.failure is None:
            frames, results, contained = [], [], []
            local = self.local
            try:
                for object_id, value in zip(ids.return_ids(task_id, num_returns), outcome.values):
                    if type(value) in SCALARS:  # (no ref can hide in it: nothing to record)
                        header, buffers = serialization.dumps(value, f"the result of task {name}")
                    else:
                        with LIFETIMES.recording() as named:
                            header, buffers = serialization.dumps(value, f"the result of task {name}")
                        if named:  # refs inside the value live as long as it does (orion.nested_refs)
                            named = list(dict.fromkeys(named))
                            contained.append([object_id, named])
                            self.client._unreported.update(named)
                    if local is not None and serialized_size(header, buffers) > INLINE_MAX:
                        # Large: it stays in this node's store; the head only learns its size.
                        try:
                            results.append([None, local.write(object_id, header, buffers)])
                            continue
                        except OSError as exc:  # no room in the store: send it inline instead
                            log.warning("could not store the result of %s in the node's store: %s", name, exc)
                    results.append([header, len(buffers)])
                    frames.extend(buffers)
            except serialization.SerializationError as exc:
                outcome = execution.Outcome(failure=execution.task_failure(exc, name))
            else:
                record = [task_id, results, [started, max(started, time.time())]]
                if contained:
                    record.append(contained)
                self._dones.append(record)
                self._done_frames.extend(frames)
                if self._suspended:
                    # Run inside a get that waits for it: the waiting task reads these
                    # values here at once, not after a round trip through the head.
                    self._nested_values = self._own_values(task_id, results, frames)
                # Sent by whoever ran us (serve, or a get's loop) once the tasks run
                # back to back are done, after this task's inputs are let go: a
                # mapped input stays pinned (see shm_format) until then.
                if len(self._dones) >= _DONE_BATCH:
                    self._send_dones()
                return
        failure = outcome.failure
        if self._dones:
            self._send_dones()
        self._hand_over_refs()
        self.send("failed", [task_id, wire.encode_failure(Failure(failure.kind, failure.message,
                                                                  _pickle_payload(failure.payload))),
                             outcome.retryable, outcome.cancelled, [started, max(started, time.time())]])

    def _own_values(self, task_id, results, frames):
        """Store entries for the results just reported (see ``wire.decode_done``)."""
        values, cursor = [], 0
        for object_id, (header, count) in zip(ids.return_ids(task_id, len(results)), results):
            if header is None:  # written into this node's store; ``count`` is its size
                values.append((object_id, Remote(count, (Holder(self.local.node_id, ""),))))
            else:
                values.append((object_id, (header, tuple(frames[cursor:cursor + count]))))
                cursor += count
        return values

    def _send_dones(self):
        """Report the tasks that finished since the last report, in one message.
        Their inputs are let go by now: unpin the files of large ones first, so
        that their next writer can recycle them as soon as the head frees them."""
        mappings.release_idle()
        self._hand_over_refs()
        self.send("done", [self._dones], self._done_frames)
        self._dones, self._done_frames = [], []
        self.client._reported()

    def _hand_over_refs(self):
        """Before a report: the refs our tasks got and still hold are borrowed
        at the head first, so that what they came in (the task's arguments, a
        value) may go once the report is in (see ``Client._flush_releases``).
        Releases wait for our next call, or for a moment idle (``serve``):
        off the path of the next dispatch."""
        if LIFETIMES.arrived or LIFETIMES.escapes:
            self.client._flush_borrows()

    def _read_inputs(self, task_id, inputs):
        """Inputs with each ``Remote`` one mapped (held by this node) or fetched
        (held elsewhere; the copy is kept here and reported). None when one
        cannot be had: the head hears ``input_lost`` and runs the task again
        once the input is available (rebuilt if need be)."""
        if not inputs or all(type(entry) is not Remote for entry in inputs.values()):
            return inputs
        resolved, keeps = {}, []
        for object_id, entry in inputs.items():
            if type(entry) is Remote:
                try:
                    header, buffers, keep = self.objects.read(object_id, entry)
                except ObjectUnavailable as exc:
                    log.warning("task %s: %s", task_id, exc)
                    self.send("input_lost", [task_id, object_id, list(exc.failed)])
                    return None
                entry = (header, buffers)
                if keep is not None:
                    keeps.append((object_id, keep))
            resolved[object_id] = entry
        if keeps:
            # The task reads the received buffers while a thread writes our
            # node's copy (pwrite releases the GIL): the copy costs it no time.
            done = []
            thread = threading.Thread(target=self._keep_copies, args=(keeps, done), name="orion-keep-copies",
                                      daemon=True)
            thread.start()
            self._copying = (thread, done)
        return resolved

    @staticmethod
    def _keep_copies(keeps, done):
        for object_id, keep in keeps:
            try:
                done.append((object_id, keep()))
            except Exception as exc:  # no room: this node just does not keep a copy
                log.warning("could not keep a copy of object %s: %s", object_id, exc)

    def _execute(self, name, function_id, blob, num_returns, retry_exc, args, inputs):
        try:
            function = self.functions.get(function_id)
            if function is None:
                blob = self._function_blobs.pop(function_id, blob)
                if blob is None:
                    raise RuntimeError(f"function {function_id} was never sent to this worker")
                function = self.functions[function_id] = serialization.loads_function(blob)
            if isinstance(retry_exc, bytes):
                retry_exc = cloudpickle.loads(retry_exc)
            call_args, call_kwargs = serialization.loads(*args)
            values = {object_id: serialization.loads(h, b) for object_id, (h, b) in inputs.items()}
            call_args, call_kwargs = execution.resolve_args(call_args, call_kwargs, values)
        except Exception as exc:  # unpicklable here (missing module...): the task fails, clearly
            return execution.Outcome(failure=execution.task_failure(exc, name))
        return execution.run(function, call_args, call_kwargs, num_returns, retry_exc, name)

    # ---------------------------------------------------------- main
    def set_blocked(self, blocked, waits=()):
        """Our task starts (True) or stops (False) waiting in get; ``waits``:
        the ids it needs, all of them (the head may have us run their tasks)."""
        if blocked:
            if self.output.records:
                self._send_logs()  # what it printed so far comes before what it waits for
            if self._dones:
                self._send_dones()  # what it waits for may be among them
            self._in_get = True
            while (dispatch := self._next_queued()) is not None:
                self.send("rejected", [dispatch[0]])
            self.send("blocked", [list(waits) if len(waits) <= protocol.MAX_WAITS else []])
        else:
            self._in_get = False
            self.send("unblocked")

    def _run_queued(self):
        """Run the tasks queued here back to back, then report them together."""
        while (dispatch := self._next_queued()) is not None:
            self._run(dispatch)
        self._report()

    def _report(self):
        """Tell the head of the tasks finished, and the node of what they wrote."""
        if self._dones:
            self._send_dones()
        if self._seals:
            self._flush_seals()

    def serve(self):
        context.current.worker = self
        api._install_client(self.client)
        self.send("hello", ["worker", self.worker_id, self.node_id, os.getpid()])
        while True:
            try:
                self._run_queued()
                if self.client._releases_pending():
                    # Releases wait while tasks keep coming (sent before the
                    # next dispatch arrives, they would delay it); idle a
                    # moment, hand them over.
                    if not self._receive(IDLE_RELEASE_MS):
                        self.client._flush_releases()
                    continue
                self._receive()
            except KeyboardInterrupt:
                continue  # a cancel that arrived after its task ended

    # ---------------------------------------------------------- output
    def _send_logs(self):
        records = self.output.take()
        if records:
            waiting = self._waiting_outputs[-1] if self._waiting_outputs else None
            if waiting is not None:
                # A task run inside the get of the task that submitted it: its lines
                # are that task's output, prefixed as if forwarded back to it through
                # the head (as for a child run elsewhere), and travel on from there.
                task_id, name = waiting
                pid = os.getpid()
                records = [[task_id, name, stream, _child_line(child, pid, self.node_id, line)]
                           for _, child, stream, line in records]
            self.send("logs", [records])

    def _send_logs_now(self):
        """The running task printed a lot, or after a pause: send its lines now,
        unless another thread printed them (only this thread uses the socket)."""
        if self._sending_logs or threading.get_ident() != self._thread_id:
            return
        self._sending_logs = True
        try:
            with self.guard():  # a cancel lands after the send, not inside it
                self._send_logs()
        finally:
            self._sending_logs = False

    def _print_forwarded(self, records):
        """Output of tasks this worker submitted. Lines of the running task's
        children become its own output (they travel on to its owner); others
        (a task that outlived the one that submitted it) go to the real streams."""
        output = self.output
        ours, stray = [], []
        for task_id, pid, node_id, name, stream, line in records:
            text = _child_line(name, pid, node_id, line)
            if output.active and task_id in self.children:
                ours.append((stream, text))
            else:
                stray.append((stream, text))
        for stream, text in ours:
            output.add(stream, [text], flush=False)
        if ours:
            self._send_logs()  # the task waits in get (we are on the socket's thread): pass them on now
        for stream, text in stray:
            target = sys.__stderr__ if stream == "stderr" else sys.__stdout__
            try:
                target.write(text + "\n")
                target.flush()
            except (OSError, ValueError, AttributeError):
                pass


# Ids of the tasks dealt with lately that a worker keeps (see Worker.recall):
# far more than any pipeline is deep.
_HANDLED_KEPT = 4096


def _cancelled(name):
    return execution.Outcome(failure=Failure("cancelled", f"task {name} was cancelled"), cancelled=True)


def _child_line(name, pid, node_id, line):
    """A line another task printed, as it becomes part of this task's output."""
    return f"({name} pid={pid} node={node_id}) {line}"


def _pickle_payload(payload):
    if payload is None or isinstance(payload, bytes):
        return payload
    cause, text, name = payload
    try:
        return cloudpickle.dumps((cause, text, name))
    except Exception:  # the exception itself cannot travel: keep its text
        return cloudpickle.dumps((None, text, name))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    address, worker_id, node_id = argv[:3]
    install_logging(worker_id)  # to the current sys.stderr: tasks' logging is captured
    gc_tuning.raise_threshold()
    worker = Worker(address, worker_id, node_id)
    threading.Thread(target=worker.watch_node, name="orion-node-watch", daemon=True).start()
    signal.signal(signal.SIGINT, worker._on_sigint)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    worker.serve()


if __name__ == "__main__":
    main()
