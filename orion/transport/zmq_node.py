"""A worker node: registers with the head, heartbeats, and supervises worker processes.

The node's one thread owns a DEALER socket (identity ``n:<node id>``). It
registers (id, address, resources, number of workers), then starts its
worker processes, which connect to the head themselves. It heartbeats the
head and watches the head's heartbeats (Paranoid Pirate): when the head falls
silent it reconnects with backoff and registers again. A thread per worker
process waits for its exit and wakes the loop through a pipe, so the head
learns of a death at once and the node starts a replacement. The node
passes the head's requests about a task to its worker on the worker's stdin
(interrupt, recall) and the worker's answers (recalled) back to the head.

The node also keeps the large objects its workers make (``orion.store``):
files in a shared-memory directory that its worker processes map directly,
spilled to disk past ``object_store_memory``, served to other nodes and
drivers on an object server socket of its own (the same thread polls it),
and freed when the head says nothing needs them any more.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import socket as socketlib
import subprocess
import sys
import threading
import time

import zmq

from .. import security
from ..store import transfer
from ..store.node_store import NodeStore, default_memory_limit
from . import protocol
from .protocol import ProtocolError
from .zmq_head import heartbeat_settings

log = logging.getLogger("orion.node")

_MAX_BACKOFF = 8.0


def _exit_reason(returncode):
    if returncode is not None and returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class _WorkerProcess:
    """One worker process: the node writes requests to its stdin (``interrupt
    <task id>``, ``recall <task id>...``) and reads its answers (``recalled
    <task id>...``) from ``replies``, a pipe of its own (fd passed as
    ``ORION_NODE_REPLY_FD``): its socket to the head has one owner, the
    thread that runs its tasks, which is busy when the node asks."""

    __slots__ = ("worker_id", "process", "retiring", "replies", "partial")

    def __init__(self, worker_id, process, replies=None):
        self.worker_id = worker_id
        self.process = process
        self.retiring = False
        self.replies = replies  # read end of its reply pipe (None once closed)
        self.partial = b""  # an answer's start, until its newline comes


class NodeAgent:
    def __init__(self, address, num_workers, resources=None, node_id=None, *, heartbeat_interval=None,
                 heartbeat_liveness=None, worker_env=None, keys=None, object_store_memory=None, spill_dir=None,
                 worker_address=None):
        self.head_address = address
        # Where its worker processes reach the head: the embedded node's head
        # is in this very process, and offers them a faster local endpoint.
        self.worker_address = worker_address or address
        self.num_workers = num_workers
        self.resources = {"CPU": float(num_workers)}
        self.resources.update({k: float(v) for k, v in (resources or {}).items()})
        self.node_id = node_id or f"{socketlib.gethostname()}-{os.getpid()}"
        self.interval, self.liveness = heartbeat_settings(heartbeat_interval, heartbeat_liveness)
        self.worker_env = dict(os.environ if worker_env is None else worker_env)
        self.worker_env.setdefault("ORION_HEARTBEAT_INTERVAL", str(self.interval))
        self.keys = keys
        if keys is not None:  # worker processes use the same cluster keys
            self.worker_env[security.KEYS_ENV] = keys.directory
        host = address.rsplit(":", 1)[0][len("tcp://"):]
        loopback = host in ("127.0.0.1", "localhost")
        self.address = host if loopback else socketlib.gethostname()
        self.context = zmq.Context()
        # The object store and its server: peers fetch this node's objects
        # from here, never through the head.
        NodeStore.cleanup_stale()  # what killed nodes of this machine left behind
        self.store = NodeStore(self.node_id, object_store_memory or default_memory_limit(), spill_dir=spill_dir)
        self._auth = keys.start_authenticator(self.context) if keys is not None else None
        self.object_server = transfer.ObjectServer(self.context, "127.0.0.1" if loopback else "*", self.store.open,
                                                   self._sealed, keys)
        if not loopback:  # advertise a name other machines can reach
            self.object_server.address = self.object_server.address.replace("*", self.address, 1)
        self.worker_env.update(ORION_STORE_SHM_DIR=self.store.shm_dir, ORION_STORE_SPILL_DIR=self.store.spill_dir,
                               ORION_STORE_LIMIT=str(self.store.memory_limit),
                               ORION_STORE_ADDRESS=self.object_server.address.replace("*", "127.0.0.1"))
        self.socket = None
        self.workers = {}  # worker id -> _WorkerProcess
        self.dormant = []  # ids of retired extra workers kept alive for reuse
        self.registered = threading.Event()
        self._numbers = itertools.count(1)
        self._exits = queue.SimpleQueue()  # (worker id, returncode) from the waiter threads
        self._wake_read, self._wake_write = os.pipe()
        self._poller = zmq.Poller()  # the loop's: the wake pipe, both sockets, the workers' reply pipes
        self._reply_pipes = {}  # read fd -> worker id
        self._stopping = False
        self._thread = None

    # ---------------------------------------------------------- lifecycle
    def start(self):
        self._thread = threading.Thread(target=self.serve, name="orion-node", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _wake(self):
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass

    # ---------------------------------------------------------- the loop
    def serve(self):
        try:
            self._serve()
        finally:
            self._shutdown()

    def _connect(self):
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, b"n:" + self.node_id.encode())
        if self.keys is not None:
            self.keys.as_client(self.socket)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(self.head_address)
        self._send("register", self._registration())

    def _sealed(self, object_id, size):
        try:
            self.store.sealed(object_id, size)
        except FileNotFoundError:
            pass  # freed before the worker's (batched) seal came: nothing to account

    def _registration(self):
        store = {"address": self.object_server.address, "limit": self.store.memory_limit}
        return [self.node_id, self.resources, self.num_workers, self.address, os.getpid(), store]

    def _serve(self):
        self._connect()
        poller = self._poller
        poller.register(self._wake_read, zmq.POLLIN)
        poller.register(self.object_server.socket, zmq.POLLIN)
        backoff = self.interval
        head_seen = time.monotonic()
        next_heartbeat = head_seen + self.interval
        while not self._stopping:
            poller.register(self.socket, zmq.POLLIN)
            timeout_ms = max(0.0, next_heartbeat - time.monotonic()) * 1000
            ready = dict(poller.poll(timeout_ms))
            if self._wake_read in ready:
                os.read(self._wake_read, 4096)
                self._reap()
            if self.object_server.socket in ready:
                self.object_server.handle_ready()
            for fd in [fd for fd in ready if fd in self._reply_pipes]:
                self._read_replies(self._reply_pipes[fd])
            if self.socket in ready:
                while True:
                    try:
                        frames = self.socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    head_seen = time.monotonic()
                    backoff = self.interval
                    if self._handle(frames) == "heartbeat" and self.registered.is_set():
                        # Answer the head's heartbeat at once (our own timer starts
                        # again): the head sends all its heartbeats in one tick, so
                        # it hears every node's back in one burst too, instead of
                        # being woken once per node at a random phase (1,000 nodes:
                        # ~2% of the head's CPU instead of ~6%).
                        self._send("heartbeat")
                        next_heartbeat = time.monotonic() + self.interval
            now = time.monotonic()
            if now >= next_heartbeat:
                if now - head_seen > self.interval * self.liveness:
                    # Head silent: reconnect (a fresh socket drops what queued up) and register again.
                    log.warning("head %s silent for %.1f s; reconnecting in %.1f s", self.head_address,
                                now - head_seen, backoff)
                    self.registered.clear()
                    poller.unregister(self.socket)
                    if self._sleep(backoff):
                        break
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    self._connect()
                    head_seen = time.monotonic()
                elif self.registered.is_set():
                    self._send("heartbeat")
                next_heartbeat = time.monotonic() + self.interval

    def _sleep(self, seconds):
        """Wait ``seconds`` unless woken by ``stop``; True when stopping."""
        poller = zmq.Poller()
        poller.register(self._wake_read, zmq.POLLIN)
        deadline = time.monotonic() + seconds
        while not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if poller.poll(remaining * 1000):
                os.read(self._wake_read, 4096)
                self._reap()
        return True

    def _send(self, msg_type, body=()):
        self.socket.send_multipart(protocol.encode(msg_type, body))

    def _handle(self, frames):
        """Act on one message from the head; return its type (None if malformed)."""
        try:
            msg_type, body, _ = protocol.decode(frames)
        except ProtocolError as exc:
            log.warning("dropped a malformed message from the head: %s", exc)
            return None
        if msg_type == "registered":
            log.info("node %s registered with %s", self.node_id, self.head_address)
            first = not self.registered.is_set()
            self.registered.set()
            if first:
                self._restart_workers()
        elif msg_type == "heartbeat":
            pass
        elif msg_type == "reregister":
            self.registered.clear()
            self._send("register", self._registration())
        elif msg_type == "start_worker":
            self._start_extra_worker()
        elif msg_type == "stop_worker":
            worker = self.workers.get(body[0])
            if worker is not None:
                worker.retiring = True
                if len(self.dormant) < self.num_workers:
                    # Keep the process, idle and connected: the next start_worker
                    # wakes it in a message instead of a ~200 ms process start.
                    self.dormant.append(worker.worker_id)
                else:
                    worker.process.terminate()
        elif msg_type == "signal_worker":
            worker_id, task_id, force = body
            worker = self.workers.get(worker_id)
            if worker is not None and worker.process.poll() is None:
                if force:
                    worker.process.kill()
                else:
                    # The worker interrupts the task only if it is still this one
                    # (or skips it if it has not started yet): see zmq_worker.
                    try:
                        worker.process.stdin.write(f"interrupt {task_id}\n".encode())
                        worker.process.stdin.flush()
                    except OSError:
                        pass  # it is exiting; its death gets reported
        elif msg_type == "recall":
            worker_id, task_ids = body
            worker = self.workers.get(worker_id)
            # Ids go on one line, space-separated: anything else cannot be an id.
            task_ids = [i for i in task_ids if isinstance(i, str) and i.isascii() and i and not any(
                c.isspace() for c in i)]
            if worker is not None and task_ids and worker.process.poll() is None:
                try:
                    worker.process.stdin.write(f"recall {' '.join(task_ids)}\n".encode())
                    worker.process.stdin.flush()
                except OSError:
                    pass  # it is exiting; its death gets reported (and its tasks requeued)
        elif msg_type == "free":
            object_ids = [i for i in body[0] if isinstance(i, str)]
            try:
                self.store.free(object_ids)
            except ValueError as exc:  # an id that cannot be a file name
                log.warning("the head asked to free a bad object id: %s", exc)
        elif msg_type == "error":
            log.warning("the head says: %s", body[0])
        else:
            log.warning("ignored unexpected %s message from the head", msg_type)
        return msg_type

    # ---------------------------------------------------------- worker processes
    def _start_extra_worker(self):
        """One more worker (others are blocked in get): a dormant one if we kept one."""
        while self.dormant:
            worker = self.workers.get(self.dormant.pop())
            if worker is not None and worker.process.poll() is None:
                worker.retiring = False
                self._send("worker_ready", [worker.worker_id])
                return
        self._spawn()

    def _restart_workers(self):
        """(Re)start the node's workers: the head knows none of the old ones."""
        self.dormant.clear()
        for worker in list(self.workers.values()):
            worker.retiring = True
            worker.process.kill()
        for _ in range(self.num_workers):
            self._spawn()

    def _spawn(self):
        worker_id = f"{self.node_id}-w{next(self._numbers)}"
        replies, reply_end = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "orion.transport.zmq_worker", self.worker_address, worker_id, self.node_id],
                stdin=subprocess.PIPE, env={**self.worker_env, "ORION_NODE_REPLY_FD": str(reply_end)},
                pass_fds=(reply_end,), start_new_session=True)
        except BaseException:
            os.close(replies)
            raise
        finally:
            os.close(reply_end)  # the worker's end now
        # Non-blocking: a descriptor the poll found readable may have been
        # closed and reused for a new worker's pipe in the same loop.
        os.set_blocking(replies, False)
        self.workers[worker_id] = _WorkerProcess(worker_id, process, replies)
        self._reply_pipes[replies] = worker_id
        self._poller.register(replies, zmq.POLLIN)
        threading.Thread(target=self._await_exit, args=(worker_id, process), daemon=True,
                         name=f"orion-wait-{worker_id}").start()

    def _await_exit(self, worker_id, process):
        self._exits.put((worker_id, process.wait()))
        self._wake()

    def _read_replies(self, worker_id):
        """Pass on what a worker answered (``recalled <task id>...``) to the head."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.replies is None:
            return
        try:
            data = os.read(worker.replies, 65536)
        except BlockingIOError:
            return  # nothing there (see _spawn)
        except OSError:
            data = b""
        if not data:  # it exited (its death is reported by its waiter thread)
            self._close_replies(worker)
            return
        lines = (worker.partial + data).split(b"\n")
        worker.partial = lines.pop()[-65536:]  # (a line without end is bounded: ids are short)
        for line in lines:
            command, *task_ids = line.decode("ascii", "replace").split()
            if command == "recalled" and task_ids and self.registered.is_set():
                self._send("recalled", [worker_id, task_ids])

    def _close_replies(self, worker):
        fd, worker.replies = worker.replies, None
        if fd is not None:
            self._reply_pipes.pop(fd, None)
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass
            os.close(fd)

    def _reap(self):
        while True:
            try:
                worker_id, returncode = self._exits.get_nowait()
            except queue.Empty:
                return
            worker = self.workers.pop(worker_id, None)
            if worker is not None:
                self._close_replies(worker)  # (whatever it still said: the head requeues its tasks anyway)
            if worker is None or self._stopping:
                continue
            if worker.process.stdin:
                worker.process.stdin.close()
            reason = _exit_reason(returncode)
            if not worker.retiring:
                log.warning("worker %s %s; starting a replacement", worker_id, reason)
            if self.registered.is_set():
                self._send("worker_died", [worker_id, reason])
                live = sum(1 for w in self.workers.values() if not w.retiring)
                if not worker.retiring and live < self.num_workers:
                    self._spawn()

    def _shutdown(self):
        said_goodbye = False
        try:
            if self.socket is not None and self.registered.is_set():
                self._send("goodbye")
                said_goodbye = True
        except zmq.ZMQError:
            pass
        workers = list(self.workers.values())
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.terminate()
        deadline = time.monotonic() + 3.0
        for worker in workers:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            if worker.process.stdin:
                worker.process.stdin.close()
            self._close_replies(worker)
        self.workers.clear()
        if self.socket is not None:
            self.socket.close(linger=500 if said_goodbye else 0)  # let the goodbye leave
        self.object_server.close()
        if self._auth is not None:
            self._auth.stop()
        self.context.term()
        self.store.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
