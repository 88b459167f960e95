"""Snapshots of a head's state for ``orion status``, the dashboard and the metrics.

Functions named ``*_locked`` run where the head's lock is held (the ZeroMQ
head's own thread answering a ``status`` request); ``HeadView`` takes the lock
itself, for the HTTP threads of the dashboard and the metrics endpoint. Under
the lock they only copy (node table, counters, references to stored values);
sizing the values and shaping JSON happen after it is released.
"""
from __future__ import annotations

import io
import pickle
import sys
import time

from ..object_store import Failed, Remote
from .tasklog import RECORD_FIELDS

STREAM_SIZE = 200  # tasks in the dashboard's live stream


def node_table_locked(head, listing):
    """``listing`` (one dict per node) with ``queued``: tasks sent to the node's
    busy workers to run next (pipelining)."""
    by_node = head.tasklog.inflight_by_node(head.scheduler.task_state)
    for node in listing:
        node["queued"] = by_node.get(node["node_id"], {}).get("assigned", 0)
    return listing


def _snapshot_locked(head, listing):
    counts = head.scheduler.counts()
    return {
        "nodes": node_table_locked(head, listing),
        "tasks": counts,
        "totals": head.tasklog.totals(),
        "entries": head.store.entries(),
        "head_traffic_bytes": dict(head.traffic),
    }


def _value_size(entry, serialized):
    if type(entry) is Failed or type(entry) is Remote:  # a Remote lives in node stores
        return 0
    if serialized:
        header, buffers = entry
        return len(header) + sum(memoryview(b).nbytes for b in buffers)
    return sys.getsizeof(entry)  # in-process values: a shallow estimate


def _finish(raw, serialized):
    """The JSON-ready status from a raw snapshot (outside the lock)."""
    entries = raw.pop("entries")
    counts = raw["tasks"]
    nodes = raw["nodes"]
    ages = [n.get("heartbeat_age") for n in nodes if n["alive"] and n.get("heartbeat_age") is not None]
    raw.update({
        "running": counts.get("running", 0),
        "queued": counts.get("ready", 0) + counts.get("assigned", 0),
        "waiting_for_inputs": counts.get("pending", 0),
        "object_store_bytes": sum(_value_size(e, serialized) for e in entries),
        "object_store_objects": len(entries),
        # Large objects kept in the nodes' stores (each copy counted).
        "node_store_bytes": sum(e.size * len(e.holders) for e in entries if type(e) is Remote),
        "node_store_objects": sum(1 for e in entries if type(e) is Remote),
        "heartbeat_lateness": max(ages) if ages else 0.0,
    })
    return raw


def status_locked(head, listing, serialized=True):
    """The reply to ``status`` (``orion status``): nodes, task counts, store usage."""
    return _finish(_snapshot_locked(head, listing), serialized)


class _Stub:
    """Stands for every class and function named in a failure's pickle: nothing
    the pickle names is imported or called, so reading it runs no code."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return _Stub


def traceback_text(payload, limit=1 << 20):
    """The traceback text of a ``task_error`` failure's payload: a tuple
    ``(exception, text, task name)`` in-process, or its pickle from a worker
    process, read without importing or calling anything it names. None if not there."""
    if isinstance(payload, (bytes, bytearray)) and len(payload) <= limit:
        try:
            payload = _InertUnpickler(io.BytesIO(payload)).load()
        except Exception:
            return None
    if isinstance(payload, tuple) and len(payload) == 3 and isinstance(payload[1], str):
        return payload[1]
    return None


def _row(record):
    return dict(zip(RECORD_FIELDS, record))


class HeadView:
    """Read-only views of one head, each taken under its lock."""

    def __init__(self, head, lock, node_listing, *, serialized, address=None):
        self.head = head
        self.lock = lock
        self.node_listing = node_listing  # called under the lock: [node dict]
        self.serialized = serialized
        self.address = address
        self.started = time.time()

    @classmethod
    def for_server(cls, server):
        return cls(server.head, server.lock, server.node_listing, serialized=True, address=server.address)

    @classmethod
    def for_inproc(cls, runtime):
        return cls(runtime.head, runtime.lock, runtime.head.scheduler.nodes, serialized=False)

    def status(self):
        with self.lock:
            raw = _snapshot_locked(self.head, self.node_listing())
        return _finish(raw, self.serialized)

    def timeline_records(self):
        with self.lock:
            return self.head.tasklog.records()

    def metrics(self):
        """Status plus the per-name counters (for the Prometheus collector)."""
        with self.lock:
            raw = _snapshot_locked(self.head, self.node_listing())
            raw["by_name"] = self.head.tasklog.counter_table()
        return _finish(raw, self.serialized)

    def dashboard_state(self):
        """What the dashboard's page polls (``/api/state``)."""
        tasklog = self.head.tasklog
        with self.lock:
            raw = _snapshot_locked(self.head, self.node_listing())
            raw["by_name"] = tasklog.counter_table()
            stream = tasklog.recent(STREAM_SIZE)
            errors = [dict(error) for error in tasklog.errors]
        state = _finish(raw, self.serialized)
        for error in errors:
            error["traceback"] = traceback_text(error.pop("payload", None))
        now = time.time()
        for node in state["nodes"]:
            cpus = node["resources"].get("CPU", 0.0)
            node["load"] = round(node["running"] / cpus, 3) if cpus else None
        stream = [_row(record) for record in stream]
        stream.sort(key=lambda r: r["started"] or r["dispatched"] or r["submitted"] or 0.0)
        state.update({
            "time": now,
            "address": self.address,
            "uptime": round(now - self.started, 3),
            "tasks": {"by_state": state["tasks"], "by_name": state.pop("by_name")},
            "stream": stream[-STREAM_SIZE:],
            "errors": errors[::-1],
        })
        return state
