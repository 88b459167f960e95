"""The driver's connection to a head over ZeroMQ.

User threads never touch the socket: they encode their submissions (pickling
happens in the caller's thread) and append them to an outbox, waking the I/O
thread through a pipe only when the outbox was empty. The I/O thread owns the
DEALER socket: it sends the outbox in batches (consecutive submissions become
one message) and puts incoming values into the local ``ObjectStore``, where
``get`` waits for them. Results of tasks this driver submitted are pushed to
it by the head; other values are asked for with ``subscribe``.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import threading
import uuid

import zmq

from .. import ids
from ..errors import OrionError
from . import protocol, wire
from .protocol import ProtocolError
from .wire_client import SerializingClient

log = logging.getLogger("orion.client")

CONNECT_TIMEOUT = 10.0


class ZmqClient(SerializingClient):
    def __init__(self, address, connect_timeout=CONNECT_TIMEOUT):
        from ..object_store import ObjectStore

        super().__init__(ObjectStore())
        ids.reseed()  # ids of an earlier client in this process must not look like ours
        self.address = address
        self.peer_id = "c:" + uuid.uuid4().hex[:16]
        self._prefix = ids.prefix()
        self.context = zmq.Context()
        self._outbox = collections.deque()
        self._wake_pending = False
        self._wake_read, self._wake_write = os.pipe()
        self._welcome = threading.Event()
        self._replies = {}
        self._request_ids = itertools.count(1)
        self._stopping = False
        self._io = threading.Thread(target=self._io_loop, name="orion-client-io", daemon=True)
        self._io.start()
        self._post(("hello", ["client", self.peer_id, None, os.getpid()], ()))
        if not self._welcome.wait(connect_timeout):
            self.shutdown()
            raise OrionError(f"no Orion head answered at {address} within {connect_timeout:g} s")

    # ------------------------------------------------------------ hooks
    def _send_submit(self, specs, remote_function):
        body, frames = self._submit_message(specs, remote_function)
        self._post(("submit", body, frames))

    def _send_put(self, object_id, value):
        header, buffers = value
        self.store.put(object_id, value)
        self._post(("put", [object_id, header, len(buffers)], buffers))

    def _request(self, object_ids):
        # Results of our own tasks come without asking.
        wanted = [i for i in object_ids if not i.startswith(self._prefix)]
        if wanted:
            self._post(("subscribe", [wanted], ()))

    def _send_cancel(self, task_id, force):
        self._post(("cancel", [task_id, force], ()))

    def nodes(self):
        self._check_open()
        request_id = next(self._request_ids)
        future = self._replies[request_id] = concurrent.futures.Future()
        self._post(("nodes", [request_id], ()))
        try:
            return future.result(timeout=10)
        except concurrent.futures.TimeoutError:
            raise OrionError(f"the head at {self.address} did not answer within 10 s") from None
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
        self.context.term()

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
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._wake_read in ready:
                    os.read(self._wake_read, 65536)
                    self._wake_pending = False
                    self._flush_outbox(sock)
                if sock in ready:
                    self._receive_all(sock)
                if self._stopping:
                    self._flush_outbox(sock)
                    break
        finally:
            sock.close(linger=200)
            os.close(self._wake_read)
            os.close(self._wake_write)

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
                sock.send_multipart(protocol.encode("submit", [functions, records], frames), copy=False)
                functions, records, frames = [], [], []
            sock.send_multipart(protocol.encode(msg_type, body, buffers), copy=False)
        if records:
            sock.send_multipart(protocol.encode("submit", [functions, records], frames), copy=False)

    def _receive_all(self, sock):
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg_type, body, buffers = protocol.decode(frames)
                if msg_type == "objects":
                    self.store.put_many(wire.decode_entries(body[0], buffers))
                elif msg_type == "welcome":
                    self._welcome.set()
                elif msg_type == "nodes_reply":
                    future = self._replies.get(body[0])
                    if future is not None and not future.done():
                        future.set_result(body[1])
                elif msg_type == "error":
                    log.warning("the head says: %s", body[0])
            except ProtocolError as exc:
                log.warning("dropped a malformed message from the head: %s", exc)


def connect(address, **settings):
    return ZmqClient(address, **settings)
