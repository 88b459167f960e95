"""The driver's connection to a head over ZeroMQ.

User threads never touch the socket: they encode their submissions (pickling
happens in the caller's thread) and append them to an outbox, waking the I/O
thread through a pipe only when the outbox was empty. The I/O thread owns the
DEALER socket: it sends the outbox in batches (consecutive submissions become
one message) and puts incoming values into the local ``ObjectStore``, where
``get`` waits for them. Results of tasks this driver submitted are pushed to
it by the head; other values are asked for with ``subscribe``.

A large ``put`` value stays here: the I/O thread serves it on an object
server of its own (``orion.store.transfer``) and the head only records where
it is. Large values made by tasks are fetched from the nodes that hold them.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import threading
import time
import uuid

import zmq

from .. import ids, security
from ..errors import OrionError
from ..log_printer import LogPrinter
from ..store import transfer
from ..object_store import Remote
from ..store.access import ObjectAccess, ObjectUnavailable, serialized_size
from . import protocol, wire
from .frames import recv_frames, send_frames
from .logs import decode_peer_records
from .protocol import ProtocolError
from .wire_client import SerializingClient

log = logging.getLogger("orion.client")

CONNECT_TIMEOUT = 10.0


class ZmqClient(SerializingClient):
    def __init__(self, address, connect_timeout=CONNECT_TIMEOUT, keys=None, log_to_driver=True):
        from ..object_store import ObjectStore

        super().__init__(ObjectStore())
        self.address = address
        self._keys = keys
        self._log_printer = LogPrinter() if log_to_driver else None  # workers' output, printed here
        self.peer_id = "c:" + uuid.uuid4().hex[:16]
        self.context = zmq.Context()
        self._outbox = collections.deque()
        self._wake_pending = False
        self._wake_read, self._wake_write = os.pipe()
        self._welcome = threading.Event()
        self._replies = {}
        self._request_ids = itertools.count(1)
        # Ownership (as in Ray): this driver keeps what it submitted until the
        # results arrive, so that it can replay it all to a restarted head.
        self._owned_lock = threading.Lock()
        self._functions = {}  # function id -> pickled function, every one sent
        self._unfinished = {}  # task id -> (submit record, buffers), in submission order
        self._put_ids = []  # objects this driver put (their values stay in self.store)
        self._wanted = set()  # foreign objects subscribed to and not arrived yet
        self._heartbeat_interval = None  # from the head's welcome
        self._stopping = False
        self.objects = ObjectAccess(self.context, keys)
        self._object_server = None  # serves our large puts; made by the I/O thread
        self._object_server_ready = threading.Event()
        self._auth = None  # ZAP authenticator for the object server (with keys)
        self._io = threading.Thread(target=self._io_loop, name="orion-client-io", daemon=True)
        self._io.start()
        self._post(("hello", ["client", self.peer_id, None, os.getpid()], ()))
        if not self._welcome.wait(connect_timeout):
            self.shutdown()
            hint = " (are the cluster keys right?)" if keys is not None else \
                " (if the cluster uses keys, pass keys=DIR or set ORION_KEYS)"
            raise OrionError(f"no Orion head answered at {address} within {connect_timeout:g} s{hint}")

    # ------------------------------------------------------------ hooks
    def _send_submit(self, specs, remote_function):
        self._reserve(len(specs))
        body, frames = self._submit_message(specs, remote_function)
        functions, records = body
        with self._owned_lock:  # kept until the results arrive, to replay to a restarted head
            for function_id, blob in functions:
                self._functions[function_id] = blob
            for spec, record in zip(specs, records):
                self._unfinished[spec.task_id] = (record, spec.payload.args[1])
        self._post(("submit", body, frames))
        self._functions_sent(functions)

    def _put_inline(self, object_id, value):
        header, buffers = value
        self.store.put(object_id, value)
        with self._owned_lock:
            self._put_ids.append(object_id)
        self._post(("put", [object_id, header, len(buffers)], buffers))

    def _put_large(self, object_id, value):
        self._object_server_ready.wait(5)
        if self._object_server is None:
            return False  # we cannot serve it (see _io_loop): it goes through the head
        self.store.put(object_id, value)
        with self._owned_lock:
            self._put_ids.append(object_id)
        self._post(("put_held", [object_id, serialized_size(*value), self._object_server.address], ()))
        return True

    def _send_lost(self, object_id, holder_ids):
        with self._owned_lock:
            self._wanted.add(object_id)
        self._post(("lost", [object_id, list(holder_ids)], ()))

    def _serve_lookup(self, object_id):
        entry = self.store.lookup(object_id)
        return entry if type(entry) is tuple else None

    def _request(self, object_ids):
        wanted = self._to_ask(object_ids)
        if wanted:
            with self._owned_lock:
                self._wanted.update(wanted)
            self._post(("subscribe", [wanted], ()))

    def _send_cancel(self, task_id, force):
        self._post(("cancel", [task_id, force], ()))

    def _send_release(self, released, borrowed, unborrowed, contained):
        self._post(("release", [list(released), list(borrowed), list(unborrowed), list(contained)], ()))

    def nodes(self):
        return self._ask("nodes", 10)

    def timeline_records(self):
        return self._ask("timeline", 60)

    def _ask(self, msg_type, timeout):
        """Send a request (``nodes``, ``timeline``) and wait for its ``*_reply``."""
        self._check_open()
        request_id = next(self._request_ids)
        future = self._replies[request_id] = concurrent.futures.Future()
        self._post((msg_type, [request_id], ()))
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise OrionError(f"the head at {self.address} did not answer within {timeout} s") from None
        finally:
            self._replies.pop(request_id, None)

    def shutdown(self):
        if self.closed:
            return
        super().shutdown()
        if self._welcome.is_set():
            self._post(("goodbye", [], ()))
        self._stopping = True
        self._wake()
        self._io.join(timeout=5)
        if self._auth is not None:
            self._auth.stop()
        self.context.term()
        if self._log_printer is not None:
            self._log_printer.close()

    # ------------------------------------------------------------ I/O thread
    def _post(self, message):
        self._outbox.append(message)
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()

    def _wake(self):
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass

    def _io_loop(self):
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.peer_id.encode())
        if self._keys is not None:
            self._keys.as_client(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        server = self._start_object_server()
        if server is not None:
            poller.register(server.socket, zmq.POLLIN)
        next_heartbeat = 0.0
        try:
            while True:
                interval = self._heartbeat_interval
                ready = dict(poller.poll(None if interval is None else interval * 1000))
                if interval is not None and time.monotonic() >= next_heartbeat:
                    # Lets a restarted head learn of us (it answers "reregister").
                    sock.send_multipart(protocol.encode("heartbeat"))
                    next_heartbeat = time.monotonic() + interval
                if self._wake_read in ready:
                    os.read(self._wake_read, 65536)
                    self._wake_pending = False
                    self._flush_outbox(sock)
                if sock in ready:
                    self._receive_all(sock)
                if server is not None and server.socket in ready:
                    server.handle_ready()
                if self._stopping:
                    if self._welcome.is_set():  # (never welcomed: no head to tell; a send could block)
                        self._flush_outbox(sock)
                    break
        except zmq.ContextTerminated:
            pass  # shutdown gave up waiting for this thread and closed the context
        finally:
            sock.close(linger=200)
            if server is not None:
                server.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _start_object_server(self):
        """Our object server, bound where the cluster's nodes can reach it: on
        loopback for a head on loopback; on all interfaces only with keys."""
        host = self.address.rsplit(":", 1)[0][len("tcp://"):]
        try:
            if security.is_loopback(host):
                self._object_server = transfer.ObjectServer(self.context, "127.0.0.1", self._serve_lookup,
                                                            keys=self._keys)
            elif self._keys is not None:
                import socket as socketlib

                self._auth = self._keys.start_authenticator(self.context)
                server = transfer.ObjectServer(self.context, "*", self._serve_lookup, keys=self._keys)
                server.address = server.address.replace("*", socketlib.gethostname(), 1)
                self._object_server = server
        except zmq.ZMQError as exc:
            log.warning("cannot serve large put values (%s); they go through the head", exc)
        finally:
            self._object_server_ready.set()
        return self._object_server

    def _flush_outbox(self, sock):
        outbox = self._outbox
        functions, records, frames = [], [], []
        while outbox:
            msg_type, body, buffers = outbox.popleft()
            if msg_type == "submit":
                functions.extend(body[0])
                records.extend(body[1])
                frames.extend(buffers)
                continue
            if records:  # keep the order: submissions first, then this message
                send_frames(sock, protocol.encode("submit", [functions, records], frames))
                functions, records, frames = [], [], []
            send_frames(sock, protocol.encode(msg_type, body, buffers))
        if records:
            send_frames(sock, protocol.encode("submit", [functions, records], frames))

    def _receive_all(self, sock):
        while True:
            try:
                frames = protocol.frames_of(recv_frames(sock, zmq.NOBLOCK))  # buffers: no copy
            except zmq.Again:
                return
            try:
                msg_type, body, buffers = protocol.decode(frames)
                if msg_type == "objects":
                    entries = wire.decode_entries(body[0], buffers)
                    settled = 0
                    with self._owned_lock:
                        for object_id, _ in entries:
                            if self._unfinished.pop(ids.task_of(object_id), None) is not None:
                                settled += 1
                            self._wanted.discard(object_id)
                    if settled:
                        self._settle(settled)
                    dropped = self._dropped
                    if dropped:  # released before they arrived
                        kept = [(i, e) for i, e in entries if i not in dropped]
                        dropped.difference_update(i for i, _ in entries)
                        entries = kept
                    self.store.put_many(entries)
                elif msg_type == "welcome":
                    self._heartbeat_interval = body[1]
                    self._welcome.set()
                elif msg_type == "reregister":
                    self._replay(sock)
                elif msg_type == "logs":
                    records = decode_peer_records(body[0])
                    if self._log_printer is not None:
                        self._log_printer.print_records(records)
                elif msg_type in ("nodes_reply", "timeline_reply"):
                    future = self._replies.get(body[0])
                    if future is not None and not future.done():
                        future.set_result(body[1])
                elif msg_type == "error":
                    log.warning("the head says: %s", body[0])
            except ProtocolError as exc:
                log.warning("dropped a malformed message from the head: %s", exc)


    def _replay(self, sock):
        """The head does not know us: it restarted. Say hello again and hand it
        everything still unfinished, in the order it was first submitted."""
        with self._owned_lock:
            functions = [[k, v] for k, v in self._functions.items()]
            unfinished = list(self._unfinished.values())
            put_ids = list(self._put_ids)
            wanted = list(self._wanted)
        log.warning("the head at %s restarted; re-submitting %d unfinished task(s)", self.address, len(unfinished))
        sock.send_multipart(protocol.encode("hello", ["client", self.peer_id, None, os.getpid()]))
        # Values the new head lacks: our puts, and results we hold that
        # unfinished tasks take as inputs.
        needed = list(put_ids)
        for record, _ in unfinished:
            needed.extend(dep for dep in record[2] if dep.startswith(self._prefix))
        for object_id in dict.fromkeys(needed):
            entry = self.store.lookup(object_id)
            if type(entry) is Remote:
                # A large value in a node's store: the new head does not know
                # where. Fetch it now and serve it ourselves (nodes outlive heads).
                try:
                    header, buffers, _ = self.objects.read(object_id, entry)
                except ObjectUnavailable as exc:
                    log.warning("cannot hand object %s to the new head: %s", object_id, exc)
                    continue
                entry = (header, buffers)  # (views that keep their mapping or frames alive)
                self.store.put(object_id, entry)
            if isinstance(entry, tuple):
                header, buffers = entry
                if self._object_server is not None and serialized_size(header, buffers) > self.inline_max:
                    sock.send_multipart(protocol.encode("put_held", [object_id, serialized_size(header, buffers),
                                                                     self._object_server.address]))
                else:
                    sock.send_multipart(protocol.encode("put", [object_id, header, len(buffers)], buffers),
                                        copy=False)
        frames = [b for _, buffers in unfinished for b in buffers]
        sock.send_multipart(protocol.encode("submit", [functions, [r for r, _ in unfinished]], frames), copy=False)
        if wanted:
            sock.send_multipart(protocol.encode("subscribe", [wanted]))


def connect(address, **settings):
    return ZmqClient(address, **settings)
