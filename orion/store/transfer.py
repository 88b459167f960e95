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

``fetch_into`` asks for the buffers in parts of ``PART_BYTES`` instead, one
message each, and writes each part into its place (a worker's node store) as
it arrives: the network and the copy overlap, each part's memory is reused
for the next instead of faulting in one fresh 100 MiB message, and the copy
the node keeps is the value itself (loopback, 100 MiB into a fresh tmpfs
file: 0.73 GB/s as one message then a copy, 1.58 GB/s in 1 MiB parts).
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
# Bytes per part of a streamed fetch (1 MiB measured best here: 5.4 GB/s over
# loopback into reused memory, against 4.6 at 4 MiB and 3.4 at 16 MiB), and
# the sizes an asker may choose from.
PART_BYTES = 1 << 20
MIN_PART_BYTES, MAX_PART_BYTES = 64 * 1024, 64 << 20


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
                elif msg_type == "fetch_parts":
                    check(MIN_PART_BYTES <= body[1] <= MAX_PART_BYTES,
                          f"bytes per part must be from {MIN_PART_BYTES} to {MAX_PART_BYTES}")
                    self._serve(identity, body[0], body[1])
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

    def _serve(self, identity, object_id, part_bytes=None):
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
        if part_bytes is None:
            self._reply(identity, protocol.encode("object", [object_id, header, len(buffers)], buffers))
        else:
            # Streamed: the lengths first, then each buffer in parts, in order
            # (one connection keeps them in order), each a view of the mapping.
            views = [memoryview(b).cast("B") for b in buffers]
            if not self._reply(identity, protocol.encode("object_parts", [object_id, header,
                                                                          [view.nbytes for view in views]])):
                return
            for index, view in enumerate(views):
                for position in range(0, view.nbytes, part_bytes):
                    if not self._reply(identity, protocol.encode("part", [index, position],
                                                                 [view[position:position + part_bytes]])):
                        return
        self.bytes_served += len(header) + sum(memoryview(b).nbytes for b in buffers)

    def _reply(self, identity, frames):
        try:
            self.socket.send_multipart([identity, *frames], copy=False)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the asker is gone
            log.info("object server: could not answer a peer: %s", exc)
            return False

    def close(self):
        self.socket.close(linger=0)


def fetch(context, address, object_id, size=0, keys=None, timeout=None):
    """``(header, buffers)`` of ``object_id`` from the object server at
    ``address``; ``FetchError`` if it cannot be had from there."""
    with _Exchange(context, address, size, keys, timeout) as exchange:
        exchange.send(protocol.encode("fetch", [object_id]))
        return _decode_reply(exchange.receive(), object_id, address)


def fetch_into(context, address, object_id, open_writer, size=0, keys=None, timeout=None, part_bytes=PART_BYTES):
    """Fetch ``object_id`` in parts straight into ``open_writer(header,
    lengths)`` (an ``shm_format.ObjectWriter``); returns what its ``commit``
    does. ``FetchError`` if the object cannot be had from there (the writer
    is aborted); what ``open_writer`` raises passes through."""
    with _Exchange(context, address, size, keys, timeout) as exchange:
        exchange.send(protocol.encode("fetch_parts", [object_id, part_bytes]))
        header, lengths = _decode_streamed(exchange.receive(), object_id, address)
        writer = open_writer(header, lengths)
        try:
            for index, length in enumerate(lengths):
                for position in range(0, length, part_bytes):
                    expected = min(part_bytes, length - position)
                    try:
                        msg_type, body, buffers = _decode(exchange.receive())
                        check(msg_type == "part" and body == [index, position] and len(buffers) == 1
                              and len(buffers[0]) == expected,
                              f"expected part [{index}, {position}] of {expected} bytes")
                    except ProtocolError as exc:
                        raise FetchError(f"{address} sent a malformed part of object {object_id}: {exc}") from None
                    writer.write(index, position, buffers[0].buffer)
        except BaseException:
            writer.abort()
            raise
        return writer.commit()


class _Exchange:
    """One short-lived DEALER to an object server, with the fetch's deadline
    (``timeout`` plus time for ``size`` bytes) and a connection monitor: a
    holder that is gone (connection refused) fails at once."""

    def __init__(self, context, address, size, keys, timeout):
        timeout = (FETCH_TIMEOUT if timeout is None else timeout) + size / FETCH_BYTES_PER_SECOND
        self.address, self.timeout = address, timeout
        self.deadline = time.monotonic() + timeout
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.as_client(self.sock)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    def __enter__(self):
        try:
            self.sock.connect(self.address)
        except zmq.ZMQError as exc:  # not an address at all
            self.__exit__()
            raise FetchError(f"cannot connect to {self.address!r}: {exc}") from None
        return self

    def __exit__(self, *exc_info):
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)

    def send(self, frames):
        self.sock.send_multipart(frames)

    def receive(self):
        """The next message's frames (``zmq.Frame``s), before the deadline."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"{self.address} did not send the object within {self.timeout:.1f} s")
            ready = dict(self.poller.poll(remaining * 1000))
            if self.sock in ready:
                return self.sock.recv_multipart(copy=False)
            if self.monitor in ready:
                event = recv_monitor_message(self.monitor)
                if event["event"] == zmq.EVENT_CONNECT_RETRIED:
                    raise FetchError(f"{self.address} refused the connection (its holder is gone)")
                raise FetchError(f"{self.address} refused our keys")


def _decode(frames):
    """``protocol.decode`` of a message received as ``zmq.Frame``s (buffers stay frames)."""
    return protocol.decode([frames[0].bytes, *frames[1:]])


def _decode_streamed(frames, object_id, address):
    """``(header, buffer lengths)`` from the first answer to a streamed fetch."""
    try:
        msg_type, body, _ = _decode(frames)
        _check_answer(msg_type, "object_parts", body, object_id, address)
        _, header, lengths = body
        check(all(type(n) is int and n >= 0 for n in lengths), "buffer lengths must be ints >= 0")
        return header, lengths
    except ProtocolError as exc:
        raise FetchError(f"{address} sent a malformed reply: {exc}") from None


def _check_answer(msg_type, expected, body, object_id, address):
    if msg_type == "missing":
        raise FetchError(f"{address} does not hold object {object_id}: {body[1]}")
    if msg_type == "error":
        raise FetchError(f"{address} refused the request: {body[0]}")
    check(msg_type == expected, f"unexpected reply {msg_type!r}")
    check(body[0] == object_id, f"asked for {object_id}, got {body[0]}")


def _decode_reply(frames, object_id, address):
    try:
        msg_type, body, buffers = _decode(frames)
        _check_answer(msg_type, "object", body, object_id, address)
        _, header, nbuf = body
        views = [frame.buffer for frame in protocol.BufferCursor(buffers).take(nbuf)]
        return header, views
    except ProtocolError as exc:
        raise FetchError(f"{address} sent a malformed reply: {exc}") from None
