"""The networked head: one ROUTER socket, one thread, the shared ``Head`` behind it.

Every peer connects a DEALER with an identity that says what it is:
``n:<node id>`` (a worker node's supervisor), ``w:<worker id>`` (a worker
process) or ``c:<random>`` (a driver). The server thread owns the socket and
the ``Head``: it drains whatever arrived, feeds it to the head, then sends
what the head's commands produced, batched per peer (many dispatches or
values travel in one message). It keeps the node registry and heartbeats in
both directions (Paranoid Pirate): a node silent for ``interval * liveness``
seconds is evicted and its running tasks go back to the scheduler.
The embedded cluster's head also listens on a Unix socket, where its own
node's worker processes connect (``local_endpoint``).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import security
from ..head import Head
from ..object_store import Holder, Remote
from ..observe import state as observe_state
from ..scheduler.events import Failure
from ..store.node_store import remove_dirs
from . import protocol, wire
from .frames import send_frames
from .base import PIPELINE_DEPTH, HeadTransport
from .logs import LogForwarder
from .protocol import ProtocolError, check

log = logging.getLogger("orion.head")

# A worker blocked in get lends its resources at once, but its node starts an
# extra worker process for them only once it has been blocked this long: a
# start costs ~0.1 s of CPU, and most gets (a parent whose children run inside
# its get) are over in milliseconds.
EXTRA_WORKER_DELAY = 0.05
DEFAULT_HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats, both ways
DEFAULT_HEARTBEAT_LIVENESS = 5  # missed heartbeats before a peer counts as dead
_KEEP_FRAMES_FROM = 4096  # bytes: smaller frames are copied out of their message
_POLLIN = int(zmq.POLLIN)  # (a plain int: the enum's & is slow on the hot path)
_DRAIN_LIMIT = 2000  # messages handled before the loop sends what they produced


BATCH_ITEMS = 5_000  # dispatches or values per message, at most
# A remote driver silent for this many times a node's ``interval * liveness``
# is taken for dead and what it owned is freed (``Head.driver_gone``).
CLIENT_SILENCE = 4
RECEIVE_QUEUE_MESSAGES = 10_000  # per peer, queued by ZeroMQ before the head reads them
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30  # per frame; ORION_MAX_MESSAGE_BYTES overrides
_MAX_IPC_PATH = 100  # bytes of a Unix socket's path (sun_path holds 108 on Linux, 104 on macOS)

_HANDSHAKE_REASONS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "its key is not allowed (wrong cluster keys)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake protocol error (no keys, or wrong keys?)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed (no keys, or not an Orion peer?)",
}


def max_message_size():
    return int(os.environ.get("ORION_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES))


def heartbeat_settings(interval=None, liveness=None):
    """Heartbeat interval and liveness: arguments, else ``ORION_HEARTBEAT_*`` env, else defaults."""
    interval = interval if interval is not None else float(
        os.environ.get("ORION_HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL))
    liveness = liveness if liveness is not None else int(
        os.environ.get("ORION_HEARTBEAT_LIVENESS", DEFAULT_HEARTBEAT_LIVENESS))
    if interval <= 0 or liveness < 1:
        raise ValueError("heartbeat interval must be > 0 and liveness >= 1")
    return interval, liveness


def worker_identity(worker_id):
    return b"w:" + worker_id.encode()


class _NodeEntry:
    __slots__ = ("node_id", "identity", "address", "pid", "last_seen", "alive", "workers", "store_limit")

    def __init__(self, node_id, identity, address, pid, now):
        self.node_id = node_id
        self.identity = identity
        self.address = address
        self.pid = pid
        self.last_seen = now
        self.alive = True
        self.workers = set()
        self.store_limit = 0  # bytes of memory its object store may use before spilling


class ZmqHeadTransport(HeadTransport):
    """Buffers what the head says per peer; the server sends it in batches."""

    def __init__(self, server):
        self.server = server
        self.batches = {}  # identity -> {"dispatch": [records], "objects": [items], "frames": {...}}
        self.singles = []  # (identity, frames) sent as they are
        self.local_clients = {}  # peer id -> an in-process driver (EmbeddedClient.put_entry)
        # node id -> the NodeStore of a node in this process (the embedded one): its
        # large objects are freed at once, so that a large put that follows a
        # release can recycle the file.
        self.local_stores = {}

    def _batch(self, identity, kind):
        peer = self.batches.get(identity)
        if peer is None:
            peer = self.batches[identity] = {}
        batch = peer.get(kind)
        if batch is None:
            batch = peer[kind] = ([], [])
        elif len(batch[0]) >= BATCH_ITEMS:
            # Keep every message well under the receivers' envelope limit.
            self.singles.append((identity, protocol.encode(kind, [batch[0]], batch[1])))
            batch = peer[kind] = ([], [])
        return batch

    def dispatch(self, worker_id, spec, inputs, function, nested=False):
        known = self.server.worker_functions.setdefault(worker_id, set())
        function_id = spec.payload.function_id
        blob = None
        if function_id not in known:
            known.add(function_id)
            blob = function
        # "help": run it inside the get the worker's task waits in (same records).
        records, frames = self._batch(worker_identity(worker_id), "help" if nested else "dispatch")
        records.append(wire.encode_dispatch(spec, inputs, blob, frames))

    def deliver(self, peer_id, object_id, entry):
        local = self.local_clients.get(peer_id)
        if local is not None:  # a driver in this process: no message needed
            local.put_entry(object_id, entry)
            return
        items, frames = self._batch(peer_id.encode("latin-1"), "objects")
        items.append(wire.encode_entry(object_id, entry, frames))

    def free(self, holder_id, object_ids):
        node = self.server.nodes.get(holder_id)
        if node is None or not node.alive or not object_ids:
            return
        store = self.local_stores.get(holder_id)
        if store is not None:
            # Only those whose file the pool keeps: a thousand small ones would cost
            # the caller (a driver's submit, under the lock) a thousand unlinks;
            # they go by message to the node's thread, as for any node.
            now = store.recyclable(object_ids)
            if now:
                try:
                    store.free(now)
                except ValueError as exc:  # an id that cannot be a file name
                    log.warning("could not free objects of node %s: %s", holder_id, exc)
                now = set(now)
                object_ids = [object_id for object_id in object_ids if object_id not in now]
        if object_ids:
            items, _ = self._batch(node.identity, "free")
            items.extend(object_ids)

    def interrupt(self, worker_id, task_id, force):
        node = self.server.node_of_worker(worker_id)
        if node is not None:
            self.singles.append((node.identity, protocol.encode("signal_worker", [worker_id, task_id, force])))

    def recall(self, worker_id, task_ids):
        node = self.server.node_of_worker(worker_id)
        if node is not None:
            self.singles.append((node.identity, protocol.encode("recall", [worker_id, list(task_ids)])))

    def start_worker(self, node_id):
        node = self.server.nodes.get(node_id)
        if node is not None and node.alive:
            self.singles.append((node.identity, protocol.encode("start_worker")))

    def stop_worker(self, worker_id):
        node = self.server.node_of_worker(worker_id)
        if node is not None:
            self.singles.append((node.identity, protocol.encode("stop_worker", [worker_id])))

    def flush(self):
        pass  # the server sends once per drained batch of messages

    def pending(self):
        """Whether anything is buffered."""
        return bool(self.singles or self.batches)

    def take(self):
        """Everything buffered, as ``(identity, frames)`` messages."""
        messages = self.singles
        self.singles = []
        for identity, kinds in self.batches.items():
            for kind, (items, frames) in kinds.items():
                messages.append((identity, protocol.encode(kind, [items], frames)))
        self.batches = {}
        return messages


class _Lifecycle:
    """What a HeadServer needs only to start and to close: apart, so that the
    server keeps under 30 instance attributes (at 30 or more CPython 3.11
    stops sharing their keys, and every ``self.x`` of the serve loop and the
    message handlers gets slower)."""

    __slots__ = ("own_context", "auth", "remove_ipc_dir", "thread")

    def __init__(self, own_context):
        self.own_context = own_context  # the server made its ZeroMQ context: it terminates it
        self.auth = None  # the CurveZMQ authenticator, if keys were given
        self.remove_ipc_dir = None  # finalizer removing the IPC endpoint's directory
        self.thread = None  # the serve thread, once started


class HeadServer:
    def __init__(self, host="127.0.0.1", port=0, *, heartbeat_interval=None, heartbeat_liveness=None,
                 policy="least_loaded", context=None, keys=None, max_message_bytes=None, local_endpoint=False):
        self.interval, self.liveness = heartbeat_settings(heartbeat_interval, heartbeat_liveness)
        security.require_keys_for(host, keys)
        self.head_id = uuid.uuid4().hex[:12]
        # What start and close need, kept in one attribute (see _Lifecycle).
        self._life = _Lifecycle(own_context=context is None)
        self.context = context or zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable sends raise, never vanish
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a peer reconnecting with its id takes over
        self.router.setsockopt(zmq.SNDHWM, 0)  # no silent drops at a high-water mark
        # A peer that pushes faster than we read blocks in its send (back-pressure)
        # instead of piling messages up in our memory.
        self.router.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE_MESSAGES)
        # A frame that declares more than this is refused before anything is
        # allocated, and its sender disconnected.
        self.router.setsockopt(zmq.MAXMSGSIZE, max_message_bytes or max_message_size())
        self.router.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.as_server(self.router)
            self._life.auth = keys.start_authenticator(self.context)
        self.refusals = security.RefusalLog()
        if port:
            self.router.bind(f"tcp://{host}:{port}")
        else:
            port = self.router.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        # Where processes of this machine connect (``local_endpoint``: the
        # embedded node's workers): an IPC endpoint when there is one.
        self.local_address = (self._bind_ipc() if local_endpoint else None) or self.address
        self._monitor = self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED | security.HANDSHAKE_EVENTS)
        self._node_fds = {}  # connection fd -> id of the node last heard on it
        self.transport = ZmqHeadTransport(self)
        # Nodes pipeline up to PIPELINE_DEPTH tasks per worker, each task name
        # as deep as its run time makes worth it (Scheduler._pipeline_limit).
        self.head = Head(self.transport, policy, adaptive_pipelining=True,
                         extra_worker_delay=EXTRA_WORKER_DELAY)
        self.logs = LogForwarder(self)  # workers' output -> the owners of their tasks
        self.nodes = {}  # node id -> _NodeEntry
        self.worker_nodes = {}  # worker id -> node id
        self.worker_functions = {}  # worker id -> function ids it has been sent
        self.pending_workers = {}  # node id -> [worker ids] that said hello before their node registered
        self.clients = set()
        # Remote drivers that said hello -> when they were last heard from
        # (they heartbeat): one silent for CLIENT_SILENCE times as long as a
        # node may be is taken for dead (see _tick).
        self._client_seen = {}
        self.node_registered = threading.Condition()
        self._wake_read, self._wake_write = os.pipe()
        self._wake_pending = False
        # Guards the Head: the server thread holds it while it handles a batch;
        # an in-process driver (EmbeddedClient) holds it to call the head directly.
        self.lock = threading.Lock()
        self._stopping = False
        self._closed = False  # the router is closed (send_now must not touch it)
        self._bad_messages = 0
        self._sends = 0  # messages sent on the router so far (see serve)
        self._handlers = {
            "hello": self._on_hello, "goodbye": self._on_goodbye, "heartbeat": self._on_heartbeat,
            "register": self._on_register, "worker_died": self._on_worker_died, "recalled": self._on_recalled,
            "worker_ready": self._on_worker_ready, "submit": self._on_submit,
            "put": self._on_put, "subscribe": self._on_subscribe, "cancel": self._on_cancel,
            "release": self._on_release, "nodes": self._on_nodes, "blocked": self._on_blocked,
            "unblocked": self._on_unblocked, "rejected": self._on_rejected, "done": self._on_done,
            "failed": self._on_failed, "put_held": self._on_put_held, "copied": self._on_copied,
            "lost": self._on_lost, "input_lost": self._on_input_lost, "status": self._on_status,
            "timeline": self._on_timeline, "logs": self.logs.on_logs,
        }

    def _bind_ipc(self):
        """Also listen on a Unix socket; its ``ipc://`` address, or None.

        ZeroMQ over a Unix socket skips the TCP stack: the round trip of a
        task between the embedded driver and a worker process drops from
        ~250 to ~210-230 µs on the 2-core machine (docs/PERFORMANCE.md). The
        socket lives in a directory of its own, readable by this user only,
        named as a node store's (``orion-<name>-<pid>``), so that
        ``NodeStore.cleanup_stale`` removes it if this process dies without
        closing the server."""
        if not zmq.has("ipc"):
            return None
        directory = os.path.join(tempfile.gettempdir(), f"orion-head-{self.head_id}-{os.getpid()}")
        path = os.path.join(directory, "head.sock")
        if len(path.encode()) > _MAX_IPC_PATH:
            return None  # a long TMPDIR: a Unix socket's path would not fit; TCP will do
        try:
            os.mkdir(directory, 0o700)
            self.router.bind(f"ipc://{path}")
        except (OSError, zmq.ZMQError) as exc:
            log.warning("no IPC endpoint for local workers (%s); they connect over TCP", exc)
            shutil.rmtree(directory, ignore_errors=True)
            return None
        # Removed at close, or at the latest at interpreter exit (a driver
        # ended by Ctrl-C); after SIGTERM or SIGKILL, by cleanup_stale.
        self._life.remove_ipc_dir = weakref.finalize(self, remove_dirs, os.getpid(), directory)
        return f"ipc://{path}"

    # ---------------------------------------------------------- lifecycle
    def start(self):
        self._life.thread = threading.Thread(target=self.serve, name="orion-head", daemon=True)
        self._life.thread.start()
        return self

    def wake(self):
        """Have the server thread look at the socket, at what the head
        buffered and at what an in-process driver deferred; cheap when a
        wake-up is already pending."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wake_write, b"x")
            except OSError:
                pass

    def stop(self):
        self._stopping = True
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass
        thread = self._life.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def wait_for_nodes(self, count, timeout):
        deadline = time.monotonic() + timeout
        with self.node_registered:
            while sum(1 for n in self.nodes.values() if n.alive) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.node_registered.wait(remaining)
        return True

    def serve(self):
        """The server loop (blocks until ``stop``).

        The router is used only under ``lock``, by this thread or by an
        in-process driver (``send_now``), so the loop waits on the socket's
        file descriptor rather than on the socket: ``zmq_poll`` on the socket
        itself would touch it without the lock. That descriptor is
        edge-triggered (it signals a change, not a state), so whoever used the
        socket last checks ``EVENTS`` for waiting messages before anyone
        blocks on it again (``_readable``)."""
        poller = zmq.Poller()
        poller.register(self.router.get(zmq.FD), zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        next_tick = time.monotonic() + self.interval
        scheduler_due = None  # when the scheduler wants a Tick (Scheduler.next_deadline)
        more = True  # messages may be waiting on the router: look before blocking
        try:
            while not self._stopping:
                wake_at = next_tick if scheduler_due is None else min(next_tick, scheduler_due)
                timeout_ms = 0 if more else max(0.0, wake_at - time.monotonic()) * 1000
                ready = dict(poller.poll(timeout_ms))
                if self._stopping:
                    break
                if self._wake_read in ready:
                    os.read(self._wake_read, 65536)
                    self._wake_pending = False
                with self.lock:
                    if self._monitor in ready:
                        self._connection_events()
                    self._take_local_calls()
                    settled = self._drain()
                    sends = self._sends
                    now = time.monotonic()
                    if now >= next_tick:
                        self._tick(now)
                        next_tick = now + self.interval
                    if scheduler_due is not None and now >= scheduler_due:
                        self.head.tick(now)
                    scheduler_due = self.head.scheduler.next_deadline()
                    self._send_pending()
                    # The router, asked last thing, said it had nothing: no
                    # need to ask again unless we used it since (a send).
                    more = False if settled and self._sends == sends else self._readable()
        finally:
            with self.lock:
                self._close()

    def _take_local_calls(self):
        """What an in-process driver deferred to this thread (its submits while
        others of its tasks are in flight: ``EmbeddedClient._send_submit``)."""
        for client in self.transport.local_clients.values():
            try:
                client.hand_over_deferred()
            except Exception:  # a bug must not take the head down; say where it was
                log.exception("error while taking the calls of an in-process driver")

    def send_now(self):
        """Send what the head buffered, from the calling thread, which holds
        ``lock`` (an in-process driver after a submit): no wake-up of the
        server thread and no hop to it on the way to a worker. The server
        thread is woken only if the socket has messages for it or something
        is left to send."""
        if self._closed or not self._send_pending():
            return  # (nothing sent: the socket was not touched, nothing to check)
        if self.transport.pending() or self._readable():
            self.wake()

    def _readable(self):
        """Messages wait on the router (see ``serve``: check after every use)."""
        return self.router.get(zmq.EVENTS) & _POLLIN

    def _close(self):
        self._closed = True
        for node in self.nodes.values():
            if node.alive:
                self._send(node.identity, protocol.encode("reregister"))
        self.router.disable_monitor()
        self._monitor.close(linger=0)
        self.router.close(linger=0)
        if self._life.auth is not None:
            self._life.auth.stop()
        os.close(self._wake_read)
        os.close(self._wake_write)
        if self._life.own_context:
            self.context.term()
        if self._life.remove_ipc_dir is not None:
            self._life.remove_ipc_dir()  # (the finalizer: removes the socket's directory once)

    # ---------------------------------------------------------- the loop
    def _drain(self):
        """Handle the messages waiting on the router. Returns True when it
        stopped because the router said it has none left (``EVENTS``), with
        nothing done on the router since; False when it cannot tell."""
        router = self.router
        for count in range(_DRAIN_LIMIT):
            if count == 1 and not router.get(zmq.EVENTS) & _POLLIN:
                # Asked after the first message: most drains of a cluster that
                # is not busy hold one (a round trip's done), and a recv that
                # finds nothing costs ~3 µs (pyzmq builds the exception), the
                # question ~1. Busier drains ask this once.
                return True
            try:
                first = router.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return False
            identity = first.bytes
            frames = [identity]
            frame = first
            size = 0
            while frame.more:  # Frame.more avoids a getsockopt per frame
                frame = router.recv(copy=False)
                length = len(frame)
                size += length
                # A large buffer frame stays in its zmq message (no copy): the
                # value is stored, and sent on, as a view of it.
                frames.append(frame.buffer if length >= _KEEP_FRAMES_FROM and len(frames) > 1 else frame.bytes)
            self.head.traffic["in"] += size
            if identity[:2] == b"n:":
                # Remember which connection a node speaks on, to notice at once
                # when that connection drops (see _connection_events).
                self._node_fds[first.get(zmq.SRCFD)] = identity[2:].decode("latin-1")
            self._handle(frames)
        return False

    def _connection_events(self):
        """A TCP connection closed: if it was a node's, that node probably died.
        Evict it after one more heartbeat interval unless it speaks again
        (a restarted node reconnects and registers within that time)."""
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] & security.HANDSHAKE_EVENTS:
                self.refusals.refused(_HANDSHAKE_REASONS.get(event["event"], "handshake failed"))
                continue
            if event["event"] != zmq.EVENT_DISCONNECTED:
                continue
            node = self.nodes.get(self._node_fds.pop(event["value"], None))
            if node is not None and node.alive:
                log.warning("node %s disconnected; evicting it unless it returns within %.1f s",
                            node.node_id, self.interval)
                node.last_seen = min(node.last_seen, time.monotonic() - self.interval * (self.liveness - 1))

    def _handle(self, frames):
        identity = frames[0]
        try:
            msg_type, body, buffers = protocol.decode(frames[1:])
            if (identity[:2] == b"c:" and identity not in self.clients
                    and msg_type not in ("hello", "nodes", "status", "timeline")):
                # A driver we do not know: this head restarted under it. Ask it
                # to say hello and replay what it still waits for.
                self.clients.add(identity)
                self._send(identity, protocol.encode("reregister"))
            handler = self._handlers.get(msg_type)
            if handler is None:
                raise ProtocolError(f"message type {msg_type!r} is not for the head")
            handler(identity, body, buffers)
        except ProtocolError as exc:
            self._bad_message(identity, str(exc))
        except Exception:  # a bug must not take the head down; say where it was
            log.exception("error while handling a message from %r", identity)

    def _bad_message(self, identity, reason):
        self._bad_messages += 1
        # Log the first few, then one line per thousand, so garbage cannot flood the log.
        if self._bad_messages <= 10 or self._bad_messages % 1000 == 0:
            log.warning("dropped a malformed message from %r (%d so far): %s", identity, self._bad_messages,
                        reason)
        if identity[:2] in (b"w:", b"n:", b"c:"):
            self._send(identity, protocol.encode("error", [f"malformed message: {reason}"]))

    def _send_pending(self):
        """Send what the head buffered; whether there was anything."""
        if not self.transport.pending():
            return False
        for identity, frames in self.transport.take():
            self._send(identity, frames)
        return True

    def _send(self, identity, frames):
        self._sends += 1
        self.head.traffic["out"] += sum(memoryview(f).nbytes for f in frames)
        try:
            send_frames(self.router, [identity, *frames])
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._unreachable(identity)

    def _unreachable(self, identity):
        """ROUTER_MANDATORY told us the peer is not connected (any more)."""
        kind, _, name = identity.decode("latin-1").partition(":")
        if kind == "w" and name in self.worker_nodes:
            log.warning("worker %s is unreachable; treating it as dead", name)
            self.worker_nodes.pop(name, None)
            self.head.worker_lost(name, "its connection to the head is gone")
        elif kind == "c":
            self.clients.discard(identity)
            self.head.holder_lost(identity.decode("latin-1"), "its driver disconnected")

    def _tick(self, now):
        deadline = self.interval * self.liveness
        for node in list(self.nodes.values()):
            if not node.alive:
                continue
            silent = now - node.last_seen
            if silent > deadline:
                log.warning("node %s evicted: no heartbeat for %.1f s", node.node_id, silent)
                self._lose_node(node, f"missed heartbeats for {silent:.1f} s")
            else:
                self._send(node.identity, protocol.encode("heartbeat"))
        # A driver killed without a goodbye: what it owned would be kept for
        # good. Drivers get longer than nodes: wrongly taken for dead, one
        # loses its objects (a node's tasks are only re-run).
        for identity, seen in list(self._client_seen.items()):
            if now - seen > deadline * CLIENT_SILENCE:
                log.warning("driver %s gone: no heartbeat for %.1f s; freeing what it owned",
                            identity.decode("latin-1"), now - seen)
                self._driver_gone(identity, f"its driver was silent for {now - seen:.1f} s")

    def _lose_node(self, node, reason):
        node.alive = False
        workers = list(node.workers)
        for worker_id in workers:
            self.worker_nodes.pop(worker_id, None)
            self.worker_functions.pop(worker_id, None)
        node.workers.clear()
        self.head.node_lost(node.node_id, reason)
        # (a node that comes back starts fresh worker processes)
        self.head.owners_gone(["w:" + worker_id for worker_id in workers])

    def node_of_worker(self, worker_id):
        node_id = self.worker_nodes.get(worker_id)
        return self.nodes.get(node_id) if node_id else None

    def _peer_node(self, identity):
        """The live node entry behind a ``n:`` identity, else None."""
        if identity[:2] != b"n:":
            return None
        node = self.nodes.get(identity[2:].decode("latin-1"))
        return node if node is not None and node.alive and node.identity == identity else None

    def _peer_worker(self, identity):
        if identity[:2] != b"w:":
            raise ProtocolError("only worker processes send this message")
        worker_id = identity[2:].decode("latin-1")
        if worker_id not in self.worker_nodes:
            raise ProtocolError(f"worker {worker_id} has not said hello (or was lost)")
        return worker_id

    # ---------------------------------------------------------- handlers
    def _on_hello(self, identity, body, buffers):
        kind, peer_id, node_id, _pid = body
        if kind == "client":
            self.clients.add(identity)
            self._client_seen[identity] = time.monotonic()
        elif kind == "worker":
            check(identity == worker_identity(peer_id), "a worker's identity must be w:<worker id>")
            check(isinstance(node_id, str), "a worker must name its node")
            self.logs.worker_hello(peer_id, _pid)
            node = self.nodes.get(node_id)
            if node is None or not node.alive:
                self.pending_workers.setdefault(node_id, []).append(peer_id)
            else:
                self._join_worker(node, peer_id)
        else:
            raise ProtocolError(f"unknown peer kind {kind!r}")
        self._send(identity, protocol.encode("welcome", [self.head_id, self.interval, self.liveness]))

    def _join_worker(self, node, worker_id):
        node.workers.add(worker_id)
        self.worker_nodes[worker_id] = node.node_id
        self.worker_functions[worker_id] = set()
        self.head.worker_joined(worker_id, node.node_id)

    def _on_register(self, identity, body, buffers):
        node_id, resources, num_workers, address, _pid, store = body
        check(identity == b"n:" + node_id.encode(), "a node's identity must be n:<node id>")
        check(isinstance(store.get("address"), str) and store["address"].startswith("tcp://"),
              "the node's object store must give its tcp:// address")
        check(all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                  for k, v in resources.items()), "resources must map names to amounts >= 0")
        check(num_workers >= 0, "num_workers must be >= 0")
        old = self.nodes.get(node_id)
        if old is not None and old.alive:
            self._lose_node(old, "node re-registered")
        verb = "registered" if old is None else "re-registered"
        node = _NodeEntry(node_id, identity, address, _pid, time.monotonic())
        limit = store.get("limit")
        node.store_limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else 0
        with self.node_registered:
            self.nodes[node_id] = node
            self.node_registered.notify_all()
        # Pipelining: a worker gets its next task while it runs one, which hides
        # the network round trip between two tasks.
        self.head.node_joined(node_id, {k: float(v) for k, v in resources.items()}, num_workers, address,
                              pipeline=PIPELINE_DEPTH)
        self.head.holder_joined(node_id, Holder(node_id, store["address"]))
        log.info("node %s %s from %s: %d workers, resources %s", node_id, verb, address, num_workers, resources)
        self._send(identity, protocol.encode("registered", [self.interval, self.liveness]))
        for worker_id in self.pending_workers.pop(node_id, []):
            self._join_worker(node, worker_id)

    def _on_heartbeat(self, identity, body, buffers):
        node = self._peer_node(identity)
        if node is None:
            if identity[:2] == b"n:":
                self._send(identity, protocol.encode("reregister"))
            elif identity in self.clients:
                self._client_seen[identity] = time.monotonic()
            return
        node.last_seen = time.monotonic()

    def _on_goodbye(self, identity, body, buffers):
        node = self._peer_node(identity)
        if node is not None:
            log.info("node %s said goodbye", node.node_id)
            self._lose_node(node, "node shut down")
            del self.nodes[node.node_id]
        else:
            self._driver_gone(identity, "its driver said goodbye")

    def _driver_gone(self, identity, why):
        self.clients.discard(identity)
        self._client_seen.pop(identity, None)
        self.head.driver_gone(identity.decode("latin-1"), why)

    def _on_worker_ready(self, identity, body, buffers):
        node = self._peer_node(identity)
        check(node is not None, "only a registered node reactivates workers")
        node.last_seen = time.monotonic()
        self._join_worker(node, body[0])

    def _on_worker_died(self, identity, body, buffers):
        node = self._peer_node(identity)
        check(node is not None, "only a registered node reports worker deaths")
        node.last_seen = time.monotonic()
        worker_id, reason = body
        if worker_id in node.workers:
            node.workers.discard(worker_id)
            self.worker_nodes.pop(worker_id, None)
            self.worker_functions.pop(worker_id, None)
            self.logs.worker_gone(worker_id)
            log.info("worker %s on node %s died: %s", worker_id, node.node_id, reason)
            self.head.worker_lost(worker_id, reason)
        pending = self.pending_workers.get(node.node_id)
        if pending and worker_id in pending:
            pending.remove(worker_id)

    def _on_recalled(self, identity, body, buffers):
        """Tasks a worker of this node sent back unstarted, asked to (``recall``)."""
        node = self._peer_node(identity)
        check(node is not None, "only a registered node returns recalled tasks")
        node.last_seen = time.monotonic()
        worker_id, task_ids = body
        check(worker_id in node.workers, f"worker {worker_id} is not one of node {node.node_id}'s")
        check(all(type(task_id) is str for task_id in task_ids), "recalled task ids must be strings")
        for task_id in task_ids:
            self.head.task_rejected(worker_id, task_id)

    def _on_submit(self, identity, body, buffers):
        functions, tasks = body
        cursor = protocol.BufferCursor(buffers)
        owner = identity.decode("latin-1")
        specs = [wire.decode_submit_record(raw, cursor, owner) for raw in tasks]
        for item in functions:
            check(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                  and isinstance(item[1], bytes), "function must be [id, pickled bytes]")
            self.head.register_function(item[0], item[1])
        for spec in specs:
            check(spec.payload.function_id in self.head.functions,
                  f"task {spec.task_id} names function {spec.payload.function_id}, which was never sent")
        self.head.submit(specs)

    def _on_put(self, identity, body, buffers):
        object_id, header, count = body
        if header is None:  # a worker wrote it into its node's store
            worker_id = self._peer_worker(identity)
            check(count >= 0, "size must be >= 0")
            self.head.put(identity.decode("latin-1"), object_id, Remote(count, ()), self.worker_nodes[worker_id])
            return
        values = protocol.BufferCursor(buffers).take(count)
        self.head.put(identity.decode("latin-1"), object_id, (header, values))

    def _on_put_held(self, identity, body, buffers):
        object_id, size, address = body
        check(identity[:2] == b"c:", "only drivers keep the values they put")
        check(size >= 0 and address.startswith("tcp://"), "put_held needs a size >= 0 and a tcp:// address")
        peer = identity.decode("latin-1")
        self.head.holder_joined(peer, Holder(peer, address))
        self.head.put(peer, object_id, Remote(size, ()), peer)

    def _on_copied(self, identity, body, buffers):
        worker_id = self._peer_worker(identity)
        check(all(isinstance(i, str) for i in body[0]), "object ids must be strings")
        self.head.copied(self.worker_nodes[worker_id], body[0])

    def _on_lost(self, identity, body, buffers):
        object_id, holder_ids = body
        check(all(isinstance(i, str) for i in holder_ids), "holder ids must be strings")
        self.head.unreachable(object_id, holder_ids)
        self.head.subscribe(identity.decode("latin-1"), [object_id])  # the new copy, or the failure

    def _on_input_lost(self, identity, body, buffers):
        worker_id = self._peer_worker(identity)
        task_id, object_id, holder_ids = body
        check(all(isinstance(i, str) for i in holder_ids), "holder ids must be strings")
        self.head.input_lost(worker_id, task_id, object_id, holder_ids)

    def _on_subscribe(self, identity, body, buffers):
        object_ids = body[0]
        check(all(isinstance(i, str) for i in object_ids), "object ids must be strings")
        self.head.subscribe(identity.decode("latin-1"), object_ids)

    def _on_cancel(self, identity, body, buffers):
        self.head.cancel(body[0], body[1])

    def _on_release(self, identity, body, buffers):
        released, borrowed, unborrowed, contained = body
        check(all(isinstance(i, str) for i in released) and all(isinstance(i, str) for i in borrowed)
              and all(isinstance(i, str) for i in unborrowed), "object ids must be strings")
        self.head.refs(identity.decode("latin-1"), released, borrowed, unborrowed, wire.decode_contained(contained))

    def _on_nodes(self, identity, body, buffers):
        self._send(identity, protocol.encode("nodes_reply", [body[0], self.node_listing()]))

    def node_listing(self):
        """The scheduler's view of each node plus the age of its last heartbeat
        and the tasks queued on it."""
        now = time.monotonic()
        listing = []
        for info in self.head.scheduler.nodes():
            entry = self.nodes.get(info["node_id"])
            info["heartbeat_age"] = round(now - entry.last_seen, 3) if entry else None
            info["store_limit"] = entry.store_limit if entry else 0
            info["store_bytes"] = self._held_bytes(info["node_id"])
            listing.append(info)
        return observe_state.node_table_locked(self.head, listing)

    def _held_bytes(self, node_id):
        """Bytes of the large objects the head knows a node holds (its store's use)."""
        lookup = self.head.store.lookup
        return sum(getattr(lookup(object_id), "size", 0) for object_id in self.head.held.get(node_id, ()))

    def _on_status(self, identity, body, buffers):
        status = observe_state.status_locked(self.head, self.node_listing())
        self._send(identity, protocol.encode("status_reply", [body[0], status]))

    def _on_timeline(self, identity, body, buffers):
        self._send(identity, protocol.encode("timeline_reply", [body[0], self.head.tasklog.records()]))

    def _on_blocked(self, identity, body, buffers):
        # Optional: the ids its get waits for, all of them (see Head.worker_blocked).
        waits = body[0]
        if not (len(waits) <= protocol.MAX_WAITS and all(isinstance(i, str) for i in waits)):
            raise ProtocolError(f"blocked: expected [list of at most {protocol.MAX_WAITS} object ids]")
        self.head.worker_blocked(self._peer_worker(identity), waits)

    def _on_rejected(self, identity, body, buffers):
        self.head.task_rejected(self._peer_worker(identity), body[0])

    def _on_unblocked(self, identity, body, buffers):
        self.head.worker_unblocked(self._peer_worker(identity))

    def _on_done(self, identity, body, buffers):
        """One or more finished tasks of one worker (it batches those it ran back to back)."""
        worker_id = self._peer_worker(identity)
        node_id = self.worker_nodes[worker_id]
        at = time.monotonic()
        reports = wire.decode_done(body[0], buffers)
        return_count = self.head.scheduler.return_count
        good = []
        for report in reports:
            task_id, values = report[0], report[1]
            expected = return_count(task_id)
            if expected is None or expected == len(values):
                good.append(report)
                continue
            # Fail the task rather than drop the message: its caller must not hang.
            # (The reports before it first: it may have been queued behind them.)
            if good:
                self.head.tasks_done(worker_id, good, node_id, at)
                good = []
            self._bad_message(identity, f"task {task_id} returns {expected} values, the worker sent "
                                        f"{len(values)}")
            self.head.task_failed(worker_id, task_id, Failure(
                "task_error", f"worker {worker_id} sent {len(values)} results for a task with {expected}"))
        if good:
            self.head.tasks_done(worker_id, good, node_id, at)

    def _on_failed(self, identity, body, buffers):
        worker_id = self._peer_worker(identity)
        task_id, failure, retryable, cancelled, times = body
        times = wire.decode_times(times)
        self.head.task_failed(worker_id, task_id, wire.decode_failure(failure), retryable, cancelled, times,
                              time.monotonic())
