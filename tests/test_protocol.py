"""Unit tests of the wire protocol: ``protocol.encode/decode`` and the ``wire`` records.

Every malformed input must raise ``ProtocolError`` (and nothing else): the head
and the nodes drop such messages and carry on.
"""
from __future__ import annotations

import cloudpickle
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orion.head import TaskRecord
from orion.object_store import Failed
from orion.scheduler.events import FAILURE_KINDS, Failure, TaskSpec
from orion.transport import protocol, wire
from orion.transport.protocol import PROTOCOL_VERSION, SCHEMAS, BufferCursor, ProtocolError


def pack(*message):
    return msgpack.packb(list(message), use_bin_type=True)


SUBMIT_RECORD = ["t1", ["t1.0"], ["dep"], {"CPU": 1.0}, 3, "name", "f1", 1, False, b"args", 1, ["nested"]]
DISPATCH_RECORD = ["t1", "name", "f1", b"blob", 1, False, b"args", 1,
                   [["dep", b"hdr", 1, None], ["big", None, 5_000_000, [["n1", "tcp://127.0.0.1:5000"]]]]]

# One valid body per message type.
VALID_BODIES = {
    "hello": ["client", "c:abc", None, 123],
    "goodbye": [],
    "heartbeat": [],
    "submit": [[["f1", b"blob"]], [SUBMIT_RECORD]],
    "put": ["o1", b"header", 2],
    "subscribe": [["o1", "o2"]],
    "cancel": ["t1", True],
    "release": [["o1"], ["o2"], ["o3"], [["o4", ["o5"]]]],
    "nodes": [7],
    "status": [8],
    "timeline": [9],
    "blocked": [["t1.r", "t2.r"]],
    "unblocked": [],
    "rejected": ["t1"],
    "done": [[["t1", [[b"header", 0], [None, 5_000_000]], [1700000000.25, 1700000000.5]]]],
    "failed": ["t1", ["task_error", "boom", None], False, False, [1700000000.25, 1700000000.5]],
    "logs": [[["t1", "square", "stdout", "hello"]]],
    "register": ["n1", {"CPU": 2.0, "GPU": 1}, 2, "127.0.0.1", 4242,
                 {"address": "tcp://127.0.0.1:5000", "limit": 1 << 30}],
    "put_held": ["o1", 5_000_000, "tcp://127.0.0.1:5001"],
    "lost": ["o1", ["n1"]],
    "copied": [["o1", "o2"]],
    "input_lost": ["t1", "o1", ["n1"]],
    "free": [["o1"]],
    "fetch": ["o1"],
    "seal": [[["o1", 5_000_000]]],
    "object": ["o1", b"header", 1],
    "missing": ["o1", "not held here"],
    "fetch_parts": ["o1", 1 << 20],
    "object_parts": ["o1", b"header", [10, 0, 3]],
    "part": [0, 1 << 20],
    "worker_died": ["w1", "killed by signal SIGKILL"],
    "worker_ready": ["w1"],
    "recalled": ["w1", ["t1", "t2"]],
    "welcome": ["head", 0.5, 5],
    "registered": [1, 5],
    "reregister": [],
    "dispatch": [[DISPATCH_RECORD]],
    "help": [[DISPATCH_RECORD]],
    "objects": [[["o1", True, b"header", 1], ["o2", False, ["cancelled", "gone", None], 0],
                 ["o3", "remote", [5_000_000, [["n1", "tcp://127.0.0.1:5000"]]], 0]]],
    "nodes_reply": [7, [{"node_id": "n1", "alive": True}]],
    "status_reply": [8, {"nodes": [], "tasks": {"ready": 0}, "object_store_bytes": 0}],
    "timeline_reply": [9, [["t1", "f", "finished", "n1", "n1-w1", 1, 1.0, 1.0, 1.5, 1.6, 2.0, 2.1]]],
    "start_worker": [],
    "stop_worker": ["w1"],
    "signal_worker": ["w1", "t1", False],
    "recall": ["w1", ["t1", "t2"]],
    "error": ["bad"],
}


def test_valid_bodies_cover_every_message_type():
    assert set(VALID_BODIES) == set(SCHEMAS)


# ----------------------------------------------------------------- round trips
@pytest.mark.parametrize("msg_type", sorted(SCHEMAS))
def test_round_trip_every_type(msg_type):
    body = VALID_BODIES[msg_type]
    buffers = [b"buf-0", memoryview(b"buf-1")]
    frames = protocol.encode(msg_type, body, buffers)
    assert isinstance(frames[0], bytes)
    decoded_type, decoded_body, decoded_buffers = protocol.decode(frames)
    assert decoded_type == msg_type
    assert decoded_body == body
    assert decoded_buffers == buffers


def test_round_trip_without_body_or_buffers():
    assert protocol.decode(protocol.encode("heartbeat")) == ("heartbeat", [], [])


def test_encode_puts_the_version_first():
    assert msgpack.unpackb(protocol.encode("nodes", [1])[0]) == [PROTOCOL_VERSION, "nodes", [1]]


def test_welcome_allows_a_missing_interval_and_float_or_int_numbers():
    assert protocol.decode([pack(1, "welcome", ["h", None, 5])])[1] == ["h", None, 5]
    assert protocol.decode([pack(1, "registered", [0.25, 5])])[1] == [0.25, 5]


# ----------------------------------------------------------------- malformed envelopes
MALFORMED = {
    "no frames": [],
    "empty envelope": [b""],
    "not msgpack": [b"\xc1"],
    "random bytes": [b"\x00\xff\x13garbage\x99"],
    "truncated msgpack": [pack(1, "heartbeat", [])[:-1]],
    "trailing bytes": [pack(1, "heartbeat", []) + b"\x00"],
    "not an array": [msgpack.packb({"version": 1})],
    "a number": [msgpack.packb(5)],
    "a string": [msgpack.packb("heartbeat")],
    "array too short": [pack(1, "heartbeat")],
    "array too long": [pack(1, "heartbeat", [], [])],
    "wrong version": [pack(2, "heartbeat", [])],
    "version zero": [pack(0, "heartbeat", [])],
    "version as string": [pack("1", "heartbeat", [])],
    "version as bool": [pack(True, "heartbeat", [])],
    "version as float": [pack(1.0, "heartbeat", [])],
    "version nil": [pack(None, "heartbeat", [])],
    "unknown type": [pack(1, "bogus", [])],
    "type as bytes": [pack(1, b"heartbeat", [])],
    "type as int": [pack(1, 3, [])],
    "type nil": [pack(1, None, [])],
    "body a map": [pack(1, "heartbeat", {})],
    "body nil": [pack(1, "heartbeat", None)],
    "body a string": [pack(1, "nodes", "1")],
    "body too short": [pack(1, "cancel", ["t1"])],
    "body too long": [pack(1, "heartbeat", [1])],
    "int for bool": [pack(1, "cancel", ["t1", 1])],
    "bool for int": [pack(1, "nodes", [True])],
    "float for int": [pack(1, "nodes", [1.0])],
    "nil for string": [pack(1, "error", [None])],
    "bytes for string": [pack(1, "error", [b"x"])],
    "string for bytes": [pack(1, "put", ["o", "header", 0])],
    "map for list": [pack(1, "subscribe", [{"a": 1}])],
    "list for map": [pack(1, "register", ["n", [], 1, "a", 1])],
    "bool for number": [pack(1, "registered", [True, 5])],
    "string for number": [pack(1, "welcome", ["h", "1.0", 5])],
    "ext type field": [msgpack.packb([1, "error", [msgpack.ExtType(5, b"x")]])],
    "map with list key": [b"\x93\x01\xa5error\x91\x81\x91\x01\x01"],
    "deep nesting": [b"\x91" * 100_000 + b"\xc0"],
    "huge announced array": [b"\xdd\xff\xff\xff\xff"],
}


@pytest.mark.parametrize("frames", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_envelopes_raise_protocol_error(frames):
    with pytest.raises(ProtocolError):
        protocol.decode(frames)


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


def test_oversized_envelope_is_rejected(monkeypatch):
    monkeypatch.setattr(protocol, "MAX_ENVELOPE_BYTES", 64)
    with pytest.raises(ProtocolError, match="limit"):
        protocol.decode([pack(1, "error", ["x" * 100])])
    assert protocol.decode([pack(1, "error", ["x"])])[0] == "error"


# ----------------------------------------------------------------- buffer counts
def test_buffer_cursor_hands_out_buffers_in_order():
    cursor = BufferCursor([b"a", b"b", b"c"])
    assert cursor.take(0) == []
    assert cursor.take(2) == [b"a", b"b"]
    assert cursor.take(1) == [b"c"]
    with pytest.raises(ProtocolError):
        cursor.take(1)


@pytest.mark.parametrize("count", [4, -1, True, 1.0, "1", None, [1]])
def test_buffer_cursor_rejects_bad_counts(count):
    with pytest.raises(ProtocolError):
        BufferCursor([b"a", b"b", b"c"]).take(count)


# ----------------------------------------------------------------- wire records
def make_spec(retry_exceptions=False, nbuf=1, holds=("n1", "n2")):
    record = TaskRecord("f1", (b"args", [b"x"] * nbuf), 2, retry_exceptions, "c:owner", holds)
    return TaskSpec("t1", ("t1.0", "t1.1"), ("d1", "d2"), {"CPU": 1.0, "GPU": 0.5}, 3, "my_task", record)


@pytest.mark.parametrize("retry_exceptions", [False, True, (ValueError, KeyError)])
def test_submit_record_round_trip(retry_exceptions):
    spec = make_spec(retry_exceptions)
    raw = wire.encode_submit_record(spec, b"args", 1)
    # Through msgpack, as on the wire.
    raw = msgpack.unpackb(msgpack.packb(raw, use_bin_type=True), raw=False)
    decoded = wire.decode_submit_record(raw, BufferCursor([b"x"]), "c:owner")
    assert (decoded.task_id, decoded.return_ids, decoded.dependencies, decoded.demand, decoded.max_retries,
            decoded.name) == ("t1", ("t1.0", "t1.1"), ("d1", "d2"), {"CPU": 1.0, "GPU": 0.5}, 3, "my_task")
    record = decoded.payload
    assert (record.function_id, record.args, record.num_returns, record.owner, record.holds) == \
           ("f1", (b"args", [b"x"]), 2, "c:owner", ("n1", "n2"))
    if isinstance(retry_exceptions, bool):
        assert record.retry_exceptions is retry_exceptions
    else:
        assert cloudpickle.loads(record.retry_exceptions) == retry_exceptions


def test_dispatch_round_trip():
    spec = make_spec(nbuf=2)
    frames = []
    raw = wire.encode_dispatch(spec, {"d1": (b"h1", [b"i1"]), "d2": (b"h2", [])}, b"blob", frames)
    assert frames == [b"x", b"x", b"i1"]
    raw = msgpack.unpackb(msgpack.packb(raw, use_bin_type=True), raw=False)
    task_id, name, function_id, blob, num_returns, retry_exc, args, inputs = wire.decode_dispatch(raw, frames)
    assert (task_id, name, function_id, blob, num_returns, retry_exc) == ("t1", "my_task", "f1", b"blob", 2, False)
    assert args == (b"args", [b"x", b"x"])
    assert inputs == {"d1": (b"h1", [b"i1"]), "d2": (b"h2", [])}


@pytest.mark.parametrize("kind", FAILURE_KINDS)
def test_failure_round_trip(kind):
    failure = wire.decode_failure(wire.encode_failure(Failure(kind, "message", b"payload")))
    assert (failure.kind, failure.message, failure.payload) == (kind, "message", b"payload")


def test_in_process_failure_payloads_do_not_travel():
    assert wire.encode_failure(Failure("task_error", "m", (ValueError("x"), "tb", "f"))) == ["task_error", "m", None]


def test_entries_round_trip():
    frames = []
    items = [wire.encode_entry("o1", (b"h1", [b"a", b"b"]), frames),
             wire.encode_entry("o2", Failed(Failure("cancelled", "gone")), frames),
             wire.encode_entry("o3", (b"h3", []), frames)]
    items = msgpack.unpackb(msgpack.packb(items, use_bin_type=True), raw=False)
    decoded = wire.decode_entries(items, frames)
    assert decoded[0] == ("o1", (b"h1", [b"a", b"b"]))
    assert decoded[1][0] == "o2" and isinstance(decoded[1][1], Failed)
    assert decoded[1][1].failure.kind == "cancelled"
    assert decoded[2] == ("o3", (b"h3", []))


def test_times_round_trip():
    assert list(wire.decode_times([1700000000.25, 1700000000.5])) == [1700000000.25, 1700000000.5]
    assert list(wire.decode_times([5, 5])) == [5.0, 5.0]  # ints are numbers too; an instant run is fine


@pytest.mark.parametrize("times", [None, 5, "ab", [], [1.0], [1.0, 2.0, 3.0], [2.0, 1.0], ["1", 2.0],
                                   [True, 2.0], [1.0, None], [float("nan"), 1.0], [1.0, float("inf")],
                                   {"started": 1.0}])
def test_bad_times_raise_protocol_error(times):
    with pytest.raises(ProtocolError):
        wire.decode_times(times)


def test_done_and_failed_without_times_are_rejected():
    """Version-1 peers of this release always report when they ran the task."""
    for msg_type, body in (("done", ["t1", [[b"h", 0]]]), ("failed", ["t1", ["task_error", "m", None], False,
                                                                           False])):
        with pytest.raises(ProtocolError):
            protocol.decode([pack(PROTOCOL_VERSION, msg_type, body)])


def test_done_records_name_the_refs_inside_results_only_when_there_are_any():
    times = [1700000000.25, 1700000000.5]
    decoded = wire.decode_done([["t1", [[b"h", 0]], times], ["t2", [[b"h", 0]], times, [["t20001", ["o1", "o2"]]]]],
                               [])
    assert [(task_id, contained) for task_id, _, _, contained in decoded] == \
           [("t1", ()), ("t2", [["t20001", ["o1", "o2"]]])]
    for contained in (None, "o1", [1], [["t20001"]], [["t20001", "o1"]], [[b"t20001", ["o1"]]], [["t20001", [1]]]):
        with pytest.raises(ProtocolError):
            wire.decode_done([["t1", [[b"h", 0]], times, contained]], [])
    with pytest.raises(ProtocolError):
        wire.decode_done([["t1", [[b"h", 0]], times, [], "extra"]], [])


def test_results_round_trip():
    assert wire.decode_results([[b"h1", 1], [b"h2", 0], [b"h3", 2]], [b"a", b"b", b"c"]) == \
           [(b"h1", [b"a"]), (b"h2", []), (b"h3", [b"b", b"c"])]


def _replace(record, index, value):
    record = list(record)
    record[index] = value
    return record


BAD_SUBMIT_RECORDS = {
    "not a list": "record",
    "too short": SUBMIT_RECORD[:-1],
    "too long": SUBMIT_RECORD + [1],
    "empty task id": _replace(SUBMIT_RECORD, 0, ""),
    "int task id": _replace(SUBMIT_RECORD, 0, 5),
    "no return ids": _replace(SUBMIT_RECORD, 1, []),
    "return ids not strings": _replace(SUBMIT_RECORD, 1, [1]),
    "deps not a list": _replace(SUBMIT_RECORD, 2, "dep"),
    "deps not strings": _replace(SUBMIT_RECORD, 2, [b"dep"]),
    "demand a list": _replace(SUBMIT_RECORD, 3, [["CPU", 1]]),
    "negative demand": _replace(SUBMIT_RECORD, 3, {"CPU": -1}),
    "nan demand": _replace(SUBMIT_RECORD, 3, {"CPU": float("nan")}),
    "bool demand": _replace(SUBMIT_RECORD, 3, {"CPU": True}),
    "string demand": _replace(SUBMIT_RECORD, 3, {"CPU": "1"}),
    "non-string resource": _replace(SUBMIT_RECORD, 3, {1: 1}),
    "max_retries bool": _replace(SUBMIT_RECORD, 4, True),
    "max_retries < -1": _replace(SUBMIT_RECORD, 4, -2),
    "max_retries float": _replace(SUBMIT_RECORD, 4, 1.5),
    "name nil": _replace(SUBMIT_RECORD, 5, None),
    "function id bytes": _replace(SUBMIT_RECORD, 6, b"f1"),
    "num_returns mismatch": _replace(SUBMIT_RECORD, 7, 2),
    "num_returns bool": _replace(SUBMIT_RECORD, 7, True),
    "retry_exceptions int": _replace(SUBMIT_RECORD, 8, 1),
    "args a string": _replace(SUBMIT_RECORD, 9, "args"),
    "too many buffers": _replace(SUBMIT_RECORD, 10, 2),
    "negative buffers": _replace(SUBMIT_RECORD, 10, -1),
    "buffer count a string": _replace(SUBMIT_RECORD, 10, "1"),
    "nested refs nil": _replace(SUBMIT_RECORD, 11, None),
    "nested refs not strings": _replace(SUBMIT_RECORD, 11, [1]),
}


@pytest.mark.parametrize("raw", list(BAD_SUBMIT_RECORDS.values()), ids=list(BAD_SUBMIT_RECORDS))
def test_bad_submit_records_raise_protocol_error(raw):
    with pytest.raises(ProtocolError):
        wire.decode_submit_record(raw, BufferCursor([b"x"]), "c:owner")


def test_valid_submit_record_decodes():
    spec = wire.decode_submit_record(SUBMIT_RECORD, BufferCursor([b"x"]), "c:owner")
    assert spec.task_id == "t1" and spec.payload.args == (b"args", [b"x"])


BAD_DISPATCH_RECORDS = {
    "not a list": {"a": 1},
    "too short": DISPATCH_RECORD[:-1],
    "task id int": _replace(DISPATCH_RECORD, 0, 1),
    "blob a string": _replace(DISPATCH_RECORD, 3, "blob"),
    "num_returns zero": _replace(DISPATCH_RECORD, 4, 0),
    "num_returns bool": _replace(DISPATCH_RECORD, 4, True),
    "num_returns string": _replace(DISPATCH_RECORD, 4, "1"),
    "retry_exceptions nil": _replace(DISPATCH_RECORD, 5, None),
    "args nil": _replace(DISPATCH_RECORD, 6, None),
    "too many arg buffers": _replace(DISPATCH_RECORD, 7, 5),
    "inputs a map": _replace(DISPATCH_RECORD, 8, {"dep": 1}),
    "input too short": _replace(DISPATCH_RECORD, 8, [["dep", b"hdr"]]),
    "input id bytes": _replace(DISPATCH_RECORD, 8, [[b"dep", b"hdr", 1]]),
    "too many input buffers": _replace(DISPATCH_RECORD, 8, [["dep", b"hdr", 2]]),
}


@pytest.mark.parametrize("raw", list(BAD_DISPATCH_RECORDS.values()), ids=list(BAD_DISPATCH_RECORDS))
def test_bad_dispatch_records_raise_protocol_error(raw):
    with pytest.raises(ProtocolError):
        wire.decode_dispatch(raw, [b"a", b"b"])


def test_valid_dispatch_record_decodes():
    assert wire.decode_dispatch(DISPATCH_RECORD, [b"a", b"b"])[0] == "t1"


@pytest.mark.parametrize("raw", [None, "task_error", ["task_error", "m"], ["bogus", "m", None],
                                 ["task_error", 1, None], ["task_error", "m", "payload"], [["x"], "m", None],
                                 [{"a": 1}, "m", None]])
def test_bad_failures_raise_protocol_error(raw):
    with pytest.raises(ProtocolError):
        wire.decode_failure(raw)


@pytest.mark.parametrize("items", [None, 5, "abc", {"o": 1}, [None], [["o", True, b"h"]], [["o", 1, b"h", 0]],
                                   [[1, True, b"h", 0]], [["o", True, "h", 0]], [["o", True, b"h", 3]],
                                   [["o", False, ["bogus", "m", None], 0]], [["o", False, None, 0]]])
def test_bad_entries_raise_protocol_error(items):
    with pytest.raises(ProtocolError):
        wire.decode_entries(items, [b"a"])


@pytest.mark.parametrize("results", [None, 5, "abc", {"h": 1}, [None], [[b"h"]], [["h", 0]], [[b"h", 2]],
                                     [[b"h", -1]], [[b"h", "1"]]])
def test_bad_results_raise_protocol_error(results):
    with pytest.raises(ProtocolError):
        wire.decode_results(results, [b"a"])


# ----------------------------------------------------------------- property tests
# msgpack-able data, nested: what a hostile peer can put in an envelope.
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=12) | st.binary(max_size=12)
           | st.sampled_from(["heartbeat", "submit", "done", "cancel", "register", "task_error", "CPU", ""]))
nested = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=6) | st.integers(-5, 5), children, max_size=4),
    max_leaves=25)
buffer_lists = st.lists(st.binary(max_size=8), max_size=4)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_protocol_errors(call, *args):
    try:
        call(*args)
    except ProtocolError:
        pass


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=3))
def test_decode_of_arbitrary_bytes_only_raises_protocol_error(frames):
    _only_protocol_errors(protocol.decode, frames)


@FUZZ
@given(nested, buffer_lists)
def test_decode_of_arbitrary_msgpack_only_raises_protocol_error(data, buffers):
    _only_protocol_errors(protocol.decode, [msgpack.packb(data, use_bin_type=True), *buffers])


@FUZZ
@given(st.sampled_from(sorted(SCHEMAS)), st.lists(nested, max_size=6), buffer_lists,
       st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2, "1", None]))
def test_decode_of_envelopes_with_arbitrary_bodies_only_raises_protocol_error(msg_type, body, buffers, version):
    frames = [msgpack.packb([version, msg_type, body], use_bin_type=True), *buffers]
    try:
        decoded_type, decoded_body, decoded_buffers = protocol.decode(frames)
    except ProtocolError:
        return
    assert version == PROTOCOL_VERSION and decoded_type == msg_type and decoded_buffers == buffers


@FUZZ
@given(st.sampled_from(sorted(SCHEMAS)), st.integers(0, 2**32), buffer_lists)
def test_mutated_valid_envelopes_only_raise_protocol_error(msg_type, seed, buffers):
    import random

    envelope = bytearray(protocol.encode(msg_type, VALID_BODIES[msg_type])[0])
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(3)
        position = rng.randrange(len(envelope) + 1)
        if action == 0 and envelope:
            envelope[min(position, len(envelope) - 1)] = rng.randrange(256)
        elif action == 1:
            envelope.insert(position, rng.randrange(256))
        elif envelope:
            del envelope[min(position, len(envelope) - 1)]
    _only_protocol_errors(protocol.decode, [bytes(envelope), *buffers])


@FUZZ
@given(nested, buffer_lists)
def test_wire_decoders_only_raise_protocol_error(data, buffers):
    _only_protocol_errors(wire.decode_failure, data)
    _only_protocol_errors(wire.decode_submit_record, data, BufferCursor(buffers), "c:owner")
    _only_protocol_errors(wire.decode_dispatch, data, buffers)
    _only_protocol_errors(wire.decode_entries, data, buffers)
    _only_protocol_errors(wire.decode_results, data, buffers)
    _only_protocol_errors(wire.decode_done, data, buffers)
    _only_protocol_errors(wire.decode_times, data)


def _record_strategy(template):
    """Records of the right length whose fields are each either valid or arbitrary."""
    return st.tuples(*[st.just(value) | nested for value in template]).map(list)


@FUZZ
@given(_record_strategy(SUBMIT_RECORD), buffer_lists)
def test_near_valid_submit_records_only_raise_protocol_error(raw, buffers):
    _only_protocol_errors(wire.decode_submit_record, raw, BufferCursor(buffers), "c:owner")


@FUZZ
@given(_record_strategy(DISPATCH_RECORD), buffer_lists)
def test_near_valid_dispatch_records_only_raise_protocol_error(raw, buffers):
    _only_protocol_errors(wire.decode_dispatch, raw, buffers)


@FUZZ
@given(st.lists(_record_strategy(["o1", True, b"header", 1]) | _record_strategy(["o2", False,
                                                                                  ["cancelled", "m", None], 0]),
                max_size=3), buffer_lists)
def test_near_valid_entries_only_raise_protocol_error(items, buffers):
    _only_protocol_errors(wire.decode_entries, items, buffers)


@FUZZ
@given(st.lists(_record_strategy([b"header", 1]), max_size=3), buffer_lists)
def test_near_valid_results_only_raise_protocol_error(results, buffers):
    _only_protocol_errors(wire.decode_results, results, buffers)
