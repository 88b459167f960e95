"""The wire protocol: msgpack envelopes, their validation, and frame layout.

A message is a list of ZeroMQ frames: ``[envelope, buffer, buffer, ...]``
(the ROUTER adds the peer identity in front). The envelope is a msgpack array
``[PROTOCOL_VERSION, type, body]`` where ``body`` is an array whose shape is
fixed per type (``SCHEMAS``). Buffers are the out-of-band pickle buffers of
the values that the body mentions, in order; each value in the body says how
many buffers it owns. ``docs/PROTOCOL.md`` is the human-readable version.

``decode`` validates everything before anyone uses it and raises
``ProtocolError`` (only that) on any malformed input.
"""
from __future__ import annotations

import msgpack

PROTOCOL_VERSION = 1
MAX_ENVELOPE_BYTES = 64 * 1024 * 1024


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


_S, _B, _I, _F, _BOOL, _L, _D, _N = str, bytes, int, float, bool, list, dict, type(None)
_NUM = (int, float)

# type -> field types of its body (a tuple per field: allowed Python types).
SCHEMAS = {
    # any peer -> head
    "hello": ((_S,), (_S,), (_S, _N), (_I,)),  # kind ("client"|"worker"), peer id, node id, pid
    "goodbye": (),
    "heartbeat": (),
    "submit": ((_L,), (_L,)),  # functions [[id, blob]], tasks [record...]
    # object id, header, number of buffers; or object id, nil, size: a large
    # value a worker wrote into its node's store (orion.store)
    "put": ((_S,), (_B, _N), (_I,)),
    "put_held": ((_S,), (_I,), (_S,)),  # object id, size, address: a driver keeps and serves it
    "lost": ((_S,), (_L,)),  # object id, [node ids] whose copies could not be fetched
    "subscribe": ((_L,),),  # object ids
    "cancel": ((_S,), (_BOOL,)),  # task id, force
    # released (ours: free once nothing holds them), borrowed and unborrowed
    # (others' we now hold a ref to / no longer hold), contained ([[container
    # id, [ids its value names]]...]): see orion.nested_refs
    "release": ((_L,), (_L,), (_L,), (_L,)),
    "nodes": ((_I,),),  # request id
    "status": ((_I,),),  # request id (orion status: nodes, task counts, object store)
    "timeline": ((_I,),),  # request id (orion.timeline: the head's task records)
    # worker -> head
    # object ids its get waits for, all needed ([] when the wait may end early)
    "blocked": ((_L,),),
    "rejected": ((_S,),),  # task id: a queued task sent back unstarted
    "unblocked": (),
    # times: [started, finished], wall-clock seconds (time.time()) of the run
    # [[task id, results [[header, nbuf] inline | [nil, size] in the node's store], times(, contained)]...]
    # contained: [[result id, [ids of the refs its value names]]...] (only when any)
    "done": ((_L,),),
    "copied": ((_L,),),  # object ids: the worker's node now holds a copy of each
    "input_lost": ((_S,), (_S,), (_L,)),  # task id, object id, [node ids tried]: the task did not run
    "failed": ((_S,), (_L,), (_BOOL,), (_BOOL,), (_L,)),  # task id, failure, retryable, cancelled, times
    # worker -> head: [[task id, task name, stream, line]]; head -> driver/worker:
    # [[task id, worker pid, node id, task name, stream, line]] (orion.transport.logs)
    "logs": ((_L,),),
    # node -> head
    # node id, resources, workers, address, pid, object store {address, shm_dir, spill_dir, limit}
    "register": ((_S,), (_D,), (_I,), (_S,), (_I,), (_D,)),
    "worker_died": ((_S,), (_S,)),  # worker id, reason
    "worker_ready": ((_S,),),  # a retired worker process the node kept is available again
    "recalled": ((_S,), (_L,)),  # worker id, [task ids] it sent back unstarted, asked to (recall)
    # head -> peers
    "welcome": ((_S,), (_NUM + (_N,)), (_I,)),  # head id, heartbeat interval, liveness
    "registered": ((_NUM), (_I,)),  # heartbeat interval, liveness
    "reregister": (),
    "dispatch": ((_L,),),  # [task record for a worker]
    # [task record]: tasks the worker's waiting task waits for: run them inside its get
    "help": ((_L,),),
    # [[object id, true, header, nbuf] | [id, false, failure, 0] | [id, "remote", [size, holders], 0]]
    "objects": ((_L,),),
    "free": ((_L,),),  # head -> node: object ids to delete from its store
    "nodes_reply": ((_I,), (_L,)),
    "status_reply": ((_I,), (_D,)),  # request id, {nodes, tasks, queued, object_store_bytes, ...}
    "timeline_reply": ((_I,), (_L,)),  # request id, [task record (orion.observe.tasklog.RECORD_FIELDS)]
    "start_worker": (),
    "stop_worker": ((_S,),),
    "signal_worker": ((_S,), (_S,), (_BOOL,)),  # worker id, task id, force (kill) or interrupt
    # worker id, [task ids]: those of them queued on it and not started, back please
    "recall": ((_S,), (_L,)),
    "error": ((_S,),),
    # peers -> an object server (a node's, or a driver's: orion.store.transfer)
    "fetch": ((_S,),),  # object id
    "seal": ((_L,),),  # [[object id, size]...]: a local worker wrote these into the node's store
    "object": ((_S,), (_B,), (_I,)),  # object id, header, number of buffers
    "missing": ((_S,), (_S,)),  # object id, reason
    # a fetch in parts: object id, bytes per part; answered by object_parts, then
    # one part per message ([buffer index, position] + the bytes), or missing
    "fetch_parts": ((_S,), (_I,)),
    "object_parts": ((_S,), (_B,), (_L,)),  # object id, header, [length of each buffer]
    "part": ((_I,), (_I,)),  # buffer index, position in it; one frame
}


# Object ids a ``blocked`` message may name; a get on more names none (it is
# then not helped: see "Helping" in the scheduler).
MAX_WAITS = 100_000


def encode(msg_type, body=(), buffers=()):
    """Frames for one message (without the routing identity)."""
    return [msgpack.packb([PROTOCOL_VERSION, msg_type, list(body)], use_bin_type=True), *buffers]


def decode(frames):
    """``(type, body, buffers)`` from frames; ``ProtocolError`` if malformed."""
    if not frames:
        raise ProtocolError("empty message")
    envelope = frames[0]
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise ProtocolError(f"envelope of {len(envelope)} bytes is over the {MAX_ENVELOPE_BYTES} limit")
    try:
        message = msgpack.unpackb(envelope, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:
        raise ProtocolError(f"envelope is not valid msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(message, list) or len(message) != 3:
        raise ProtocolError("envelope must be a msgpack array [version, type, body]")
    version, msg_type, body = message
    if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
        raise ProtocolError(f"protocol version {version!r} is not supported (this side speaks "
                            f"{PROTOCOL_VERSION})")
    if not isinstance(msg_type, str):
        raise ProtocolError(f"message type must be a string, got {type(msg_type).__name__}")
    schema = SCHEMAS.get(msg_type)
    if schema is None:
        raise ProtocolError(f"unknown message type {msg_type!r}")
    if not isinstance(body, list) or len(body) != len(schema):
        raise ProtocolError(f"{msg_type} body must be an array of {len(schema)} fields")
    for i, (value, allowed) in enumerate(zip(body, schema)):
        if not isinstance(value, allowed) or (isinstance(value, bool) and _BOOL not in allowed):
            raise ProtocolError(f"{msg_type} field {i} has type {type(value).__name__}")
    return msg_type, body, frames[1:]


_COPY_BELOW = 4096  # bytes: smaller frames are copied out (cheaper than keeping a zmq message alive)


def frames_of(received):
    """Frames from ``recv_multipart(copy=False)``: the envelope as bytes, each
    buffer frame as a memoryview of the received message (no copy) unless it is
    small. Values unpickled from them share the message's memory."""
    first = received[0].bytes
    rest = [frame.buffer if len(frame) >= _COPY_BELOW else frame.bytes for frame in received[1:]]
    return [first, *rest]


def check(condition, what):
    """Raise ProtocolError(what) unless ``condition``: for nested-field checks."""
    if not condition:
        raise ProtocolError(what)


class BufferCursor:
    """Hands out the out-of-band buffers of a message in order, checking counts."""

    __slots__ = ("_buffers", "_next")

    def __init__(self, buffers):
        self._buffers = buffers
        self._next = 0

    def take(self, count):
        if not isinstance(count, int) or isinstance(count, bool) or count < 0 \
                or self._next + count > len(self._buffers):
            raise ProtocolError(f"message announces {count!r} buffers but only "
                                f"{len(self._buffers) - self._next} are left")
        start = self._next
        self._next += count
        return self._buffers[start:self._next]
