"""Encoding and validating the records inside protocol messages.

Task records, stored values and failures each have one encoder and one
validating decoder here, used by the head, the nodes, the worker processes
and the drivers alike. A stored value is ``(header, buffers)`` as produced by
``orion.serialization.dumps``, or a ``Remote`` marker (size and holders) for a
large value that stays in a node's store; the head never unpickles anything.
"""
from __future__ import annotations

import math

import cloudpickle

from ..head import TaskRecord
from ..object_store import Failed, Holder, Remote
from ..scheduler.events import FAILURE_KINDS, Failure, TaskSpec
from .protocol import BufferCursor, ProtocolError, check


def _is_str_list(value):
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# --------------------------------------------------------------- failures
def encode_failure(failure):
    payload = failure.payload
    if payload is not None and not isinstance(payload, bytes):
        payload = None  # in-process payloads never travel
    return [failure.kind, failure.message, payload]


def decode_failure(raw):
    check(isinstance(raw, list) and len(raw) == 3, "failure must be [kind, message, payload]")
    kind, message, payload = raw
    check(kind in FAILURE_KINDS, f"unknown failure kind {kind!r}")
    check(isinstance(message, str), "failure message must be a string")
    check(payload is None or isinstance(payload, bytes), "failure payload must be bytes or nil")
    return Failure(kind, message, payload)


# ------------------------------------------------------------ task records
def _wire_retry(retry_exceptions):
    """``retry_exceptions`` as it travels: a bool, or the tuple of classes pickled."""
    if isinstance(retry_exceptions, (bool, bytes)):
        return retry_exceptions
    return cloudpickle.dumps(retry_exceptions)


def encode_submit_record(spec, args_header, nbuf):
    record = spec.payload
    return [spec.task_id, list(spec.return_ids), list(spec.dependencies), spec.demand, spec.max_retries,
            spec.name, record.function_id, record.num_returns, _wire_retry(record.retry_exceptions), args_header,
            nbuf, record.holds]  # (msgpack packs a tuple as an array)


def _holds(raw):
    """The ids of refs nested in a task's arguments (``TaskRecord.holds``)."""
    if raw == []:  # (nearly always: no refs nested)
        return ()
    check(_is_str_list(raw), "nested refs must be a list of object ids")
    return tuple(raw)


def decode_submit_record(raw, cursor, owner):
    check(isinstance(raw, list) and len(raw) == 12, "task record must have 12 fields")
    (task_id, return_ids, deps, demand, max_retries, name, function_id, num_returns, retry_exc,
     args_header, nbuf, holds) = raw
    # Every field checked at once with exact types (what msgpack makes): the
    # head takes ~100,000 records a second. Only a record that fails is
    # looked at field by field, for the error that names what is wrong.
    if not (type(task_id) is str and task_id and type(return_ids) is list and return_ids
            and type(deps) is list and type(demand) is dict and type(max_retries) is int and max_retries >= -1
            and type(name) is str and type(function_id) is str and type(num_returns) is int
            and num_returns == len(return_ids) and type(args_header) is bytes
            and (retry_exc is False or retry_exc is True or type(retry_exc) is bytes)
            and all(type(v) is str for v in return_ids) and all(type(v) is str for v in deps)
            and all(type(k) is str and (type(v) is float or type(v) is int) and v >= 0
                    for k, v in demand.items())):
        _check_submit_record(raw)
    holds = _holds(holds)
    buffers = cursor.take(nbuf)
    record = TaskRecord(function_id, (args_header, buffers), num_returns, retry_exc, owner, holds)
    return TaskSpec(task_id, tuple(return_ids), tuple(deps), {k: float(v) for k, v in demand.items()},
                    max_retries, name, record, owner.startswith("w:"))


def _check_submit_record(raw):
    """Raise ``ProtocolError`` naming the first field of a task record that is wrong."""
    (task_id, return_ids, deps, demand, max_retries, name, function_id, num_returns, retry_exc,
     args_header, _, _) = raw
    check(isinstance(task_id, str) and task_id, "task id must be a non-empty string")
    check(_is_str_list(return_ids) and return_ids, "return ids must be a non-empty list of strings")
    check(_is_str_list(deps), "dependencies must be a list of strings")
    check(isinstance(demand, dict) and all(isinstance(k, str) and isinstance(v, (int, float))
                                           and not isinstance(v, bool) and v >= 0
                                           for k, v in demand.items()), "demand must map names to amounts")
    check(isinstance(max_retries, int) and not isinstance(max_retries, bool) and max_retries >= -1,
          "max_retries must be an int >= -1")
    check(isinstance(name, str), "name must be a string")
    check(isinstance(function_id, str), "function id must be a string")
    check(isinstance(num_returns, int) and not isinstance(num_returns, bool)
          and num_returns == len(return_ids), "num_returns must match the return ids")
    check(isinstance(retry_exc, (bool, bytes)), "retry_exceptions must be a bool or pickled classes")
    check(isinstance(args_header, bytes), "arguments must be bytes")


def encode_dispatch(spec, inputs, function_blob, frames):
    """The body record of a dispatch; appends the buffers it uses to ``frames``."""
    record = spec.payload
    args_header, args_buffers = record.args
    frames.extend(args_buffers)
    wire_inputs = []
    for object_id, entry in (inputs or {}).items():
        if type(entry) is Remote:
            wire_inputs.append([object_id, None, entry.size, encode_holders(entry.holders)])
        else:
            header, buffers = entry
            wire_inputs.append([object_id, header, len(buffers), None])
            frames.extend(buffers)
    return [spec.task_id, spec.name, record.function_id, function_blob, record.num_returns,
            _wire_retry(record.retry_exceptions), args_header, len(args_buffers), wire_inputs]


def decode_dispatch(raw, buffers):
    check(isinstance(raw, list) and len(raw) == 9, "dispatch record must have 9 fields")
    task_id, name, function_id, blob, num_returns, retry_exc, args_header, nbuf, inputs = raw
    check(isinstance(task_id, str) and isinstance(name, str) and isinstance(function_id, str),
          "dispatch ids must be strings")
    check(blob is None or isinstance(blob, bytes), "function must be bytes or nil")
    check(isinstance(num_returns, int) and not isinstance(num_returns, bool) and num_returns >= 1,
          "num_returns must be an int >= 1")
    check(isinstance(retry_exc, (bool, bytes)), "retry_exceptions must be a bool or bytes")
    check(isinstance(args_header, bytes), "arguments must be bytes")
    check(isinstance(inputs, list), "inputs must be a list")
    cursor = BufferCursor(buffers)
    args = (args_header, cursor.take(nbuf))
    decoded_inputs = {}
    for item in inputs:
        check(isinstance(item, list) and len(item) == 4 and isinstance(item[0], str),
              "input must be [object id, header, nbuf, nil] or [object id, nil, size, holders]")
        object_id, header, count, holders = item
        if header is None:
            decoded_inputs[object_id] = Remote(_size(count), decode_holders(holders))
        else:
            check(isinstance(header, bytes), "an input's header must be bytes")
            decoded_inputs[object_id] = (header, cursor.take(count))
    return task_id, name, function_id, blob, num_returns, retry_exc, args, decoded_inputs


# ------------------------------------------------------------- stored values
def encode_entry(object_id, entry, frames):
    """One ``objects`` item for a stored value or ``Failed``; buffers go to ``frames``."""
    kind = type(entry)
    if kind is Failed:
        return [object_id, False, encode_failure(entry.failure), 0]
    if kind is Remote:
        return [object_id, "remote", [entry.size, encode_holders(entry.holders)], 0]
    header, buffers = entry
    frames.extend(buffers)
    return [object_id, True, header, len(buffers)]


def decode_entries(items, buffers):
    """``[(object_id, entry)]`` from an ``objects`` body."""
    check(isinstance(items, list), "object entries must be a list")
    cursor = BufferCursor(buffers)
    result = []
    for item in items:
        check(isinstance(item, list) and len(item) == 4 and isinstance(item[0], str)
              and (isinstance(item[1], bool) or item[1] == "remote"), "object entry must be [id, ok, value, nbuf]")
        object_id, ok, value, nbuf = item
        if ok == "remote":
            check(isinstance(value, list) and len(value) == 2, "a remote entry must be [size, holders]")
            result.append((object_id, Remote(_size(value[0]), decode_holders(value[1]))))
        elif ok:
            check(isinstance(value, bytes), "object value must be bytes")
            result.append((object_id, (value, cursor.take(nbuf))))
        else:
            result.append((object_id, Failed(decode_failure(value))))
    return result


_TIME_TYPES = (float, int)  # not bool
_INF = math.inf


def decode_times(raw):
    """``[started, finished]`` of a ``done``/``failed`` message: two finite numbers, in order."""
    if type(raw) is list and len(raw) == 2:
        started, finished = raw
        if type(started) in _TIME_TYPES and type(finished) in _TIME_TYPES and -_INF < started <= finished < _INF:
            return raw if type(started) is float and type(finished) is float else [float(started), float(finished)]
    raise ProtocolError("times must be [started, finished], finite numbers with started <= finished")


def decode_results(results, cursor):
    """The values of one ``done`` record; ``cursor`` hands out the message's buffers."""
    check(isinstance(results, list), "results must be a list")
    if not isinstance(cursor, BufferCursor):
        cursor = BufferCursor(cursor)
    values = []
    for item in results:
        check(isinstance(item, list) and len(item) == 2, "result must be [header, nbuf] or [nil, size]")
        if item[0] is None:  # written into the worker's node store: the head fills in the holder
            values.append(Remote(_size(item[1]), ()))
        else:
            check(isinstance(item[0], bytes), "a result's header must be bytes")
            values.append((item[0], cursor.take(item[1])))
    return values


def decode_done(records, buffers):
    """``[(task id, values, times, contained)]`` from a ``done`` body (tasks a
    worker ran back to back). ``contained``: ``[[result id, [ids]]...]``, the
    refs named by the values of its results (a fourth field, only when there
    are any; see ``orion.nested_refs``)."""
    check(isinstance(records, list), "done must carry a list of records")
    cursor = BufferCursor(buffers)
    decoded = []
    for record in records:
        check(isinstance(record, list) and len(record) in (3, 4) and isinstance(record[0], str),
              "a done record must be [task id, results, times] or [task id, results, times, contained]")
        contained = decode_contained(record[3]) if len(record) == 4 else ()
        decoded.append((record[0], decode_results(record[1], cursor), decode_times(record[2]), contained))
    return decoded


def decode_contained(raw):
    """``[[container id, [ids]]...]``: stored values and the refs they name
    (``done``, ``release``)."""
    check(isinstance(raw, list) and all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                                        and _is_str_list(item[1]) for item in raw),
          "contained refs must be [[container id, [object ids]]...]")
    return raw


# ------------------------------------------------------- large-object holders
def encode_holders(holders):
    return [list(holder) for holder in holders]


def decode_holders(raw):
    check(isinstance(raw, list) and raw, "holders must be a non-empty list")
    holders = []
    for item in raw:
        check(isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item),
              "a holder must be [node id, address]")
        holders.append(Holder(*item))
    return tuple(holders)


def _size(value):
    check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, "size must be an int >= 0")
    return value


__all__ = ["ProtocolError"]
