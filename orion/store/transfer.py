"""Moving large objects between processes: the object server and fetches.

A node serves the objects of its store on a ROUTER socket of its own (not the
head's): peers ask ``fetch [object id]`` and get ``object [object id, header,
nbuf]`` with the value's out-of-band buffers as separate frames, straight
from the mapped file (``copy=False``: no copy on the way out), or
``missing [object id, reason]``. Local worker processes also tell their node
when they have written objects into its
shared-memory directory, so the node can account for it and spill (in
batches: one ``seal [[object id, size]...]`` whenever the worker goes idle).

``fetch`` is the other side: one short-lived DEALER per fetch, a deadline,
and a connection monitor so that a holder that is gone (connection refused)
fails the fetch at once instead of after the deadline. The received frames
are handed out as memoryviews of the ZeroMQ messages (no copy).
"""
from __future__ import annotations

import logging
import os
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..transport import protocol
from ..transport.protocol import ProtocolError, check

log = logging.getLogger("orion.store")

# Seconds to wait for a holder's first answer; a large value gets more time
# (FETCH_BYTES_PER_SECOND) to arrive once the holder answers.
FETCH_TIMEOUT = float(os.environ.get("ORION_FETCH_TIMEOUT", 10.0))
FETCH_BYTES_PER_SECOND = 50e6
_REQUEST_BYTES = 64 * 1024  # object server requests are tiny; refuse bigger frames


class FetchError(Exception):
    """A holder could not hand the object over (gone, missing it, timed out)."""


class ObjectServer:
    """A bound ROUTER that serves ``lookup(object_id) -> (header, buffers)``.

    Owned by one thread (the node's loop, or a driver's I/O thread), which
    polls ``socket`` and calls ``handle_ready`` when it is readable.
    ``on_sealed(object_id, size)`` receives the ``seal`` notes of local workers.
    """

    def __init__(self, context, host, lookup, on_sealed=None, keys=None):
        self.lookup = lookup
        self.on_sealed = on_sealed
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished peer raises, it is not silently dropped
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, _REQUEST_BYTES)
        self.socket.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.as_server(self.socket)
        port = self.socket.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        self.bytes_served = 0

    def handle_ready(self, limit=1000):
        """Answer the requests that arrived (without blocking)."""
        for _ in range(limit):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity = frames[0]
            try:
                msg_type, body, _ = protocol.decode(frames[1:])
                if msg_type == "fetch":
                    self._serve(identity, body[0])
                elif msg_type == "seal":
                    for item in body[0]:
                        check(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                              and isinstance(item[1], int) and not isinstance(item[1], bool) and item[1] >= 0,
                              "a seal must be [object id, size >= 0]")
                        if self.on_sealed is not None:
                            self.on_sealed(*item)
                else:
                    raise ProtocolError(f"message type {msg_type!r} is not for an object server")
            except ProtocolError as exc:
                log.warning("object server: dropped a malformed request: %s", exc)
                self._reply(identity, protocol.encode("error", [f"malformed request: {exc}"]))
            except Exception:  # a bug must not take the node down
                log.exception("object server: error while serving a request")

    def _serve(self, identity, object_id):
        try:
            value = self.lookup(object_id)
        except (KeyError, FileNotFoundError, ValueError) as exc:
            value, reason = None, f"{type(exc).__name__}: {exc}"
        else:
            reason = "not held here"
        if value is None:
            self._reply(identity, protocol.encode("missing", [object_id, reason]))
            return
        header, buffers = value
        self._reply(identity, protocol.encode("object", [object_id, header, len(buffers)], buffers))
        self.bytes_served += len(header) + sum(memoryview(b).nbytes for b in buffers)

    def _reply(self, identity, frames):
        try:
            self.socket.send_multipart([identity, *frames], copy=False)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the asker is gone
            log.info("object server: could not answer a peer: %s", exc)

    def close(self):
        self.socket.close(linger=0)


def fetch(context, address, object_id, size=0, keys=None, timeout=None):
    """``(header, buffers)`` of ``object_id`` from the object server at
    ``address``; ``FetchError`` if it cannot be had from there."""
    timeout = (FETCH_TIMEOUT if timeout is None else timeout) + size / FETCH_BYTES_PER_SECOND
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.as_client(sock)
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    try:
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:  # not an address at all
            raise FetchError(f"cannot connect to {address!r}: {exc}") from None
        sock.send_multipart(protocol.encode("fetch", [object_id]))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"{address} did not send object {object_id} within {timeout:.1f} s")
            ready = dict(poller.poll(remaining * 1000))
            if sock in ready:
                return _decode_reply(sock.recv_multipart(copy=False), object_id, address)
            if monitor in ready:
                event = recv_monitor_message(monitor)
                if event["event"] == zmq.EVENT_CONNECT_RETRIED:
                    raise FetchError(f"{address} refused the connection (its holder is gone)")
                raise FetchError(f"{address} refused our keys")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def _decode_reply(frames, object_id, address):
    try:
        msg_type, body, buffers = protocol.decode([frames[0].bytes, *frames[1:]])
        if msg_type == "missing":
            raise FetchError(f"{address} does not hold object {object_id}: {body[1]}")
        if msg_type == "error":
            raise FetchError(f"{address} refused the request: {body[0]}")
        check(msg_type == "object", f"unexpected reply {msg_type!r}")
        got_id, header, nbuf = body
        check(got_id == object_id, f"asked for {object_id}, got {got_id}")
        views = [frame.buffer for frame in protocol.BufferCursor(buffers).take(nbuf)]
        return header, views
    except ProtocolError as exc:
        raise FetchError(f"{address} sent a malformed reply: {exc}") from None
