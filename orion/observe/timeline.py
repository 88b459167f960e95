"""``orion.timeline``: the head's task records as a Chrome trace (Perfetto, chrome://tracing).

The head ships plain records (``TaskLog.records``); the driver turns them into
the Trace Event Format here, off the head's thread:

* one process per node (``pid``), one thread per worker process (``tid``),
  named with ``M`` metadata events; on each worker's track a complete event
  (``ph: "X"``) per task run, named after the task, from the worker-reported
  start to its end, its args holding every time and phase length, preceded by
  a ``fetch inputs`` slice: from the dispatch (which carries the input values)
  to the start, or from the end of the worker's previous run when the task
  was queued behind it (pipelining);
* a ``scheduler`` process (pid 0) with nestable async events (``b``/``e``,
  ``id`` = task id) for the time a task waited for its inputs and then sat
  in the queue, and instant events for tasks that ended without running
  (a failed input, a cancel).

``ts`` and ``dur`` are microseconds; ``ts`` counts from the Unix epoch.
"""
from __future__ import annotations

import json
import os

from .tasklog import RECORD_FIELDS

SCHEDULER_PID = 0
_US = 1_000_000.0


def _us(seconds):
    return round(seconds * _US, 3)


def _ms(start, end):
    if start is None or end is None:
        return None
    return round(max(0.0, end - start) * 1000.0, 3)


def chrome_trace(records):
    """A Chrome trace (a dict with ``traceEvents``) from timeline records."""
    rows = [dict(zip(RECORD_FIELDS, record)) for record in records]
    events = [{"ph": "M", "name": "process_name", "pid": SCHEDULER_PID, "tid": 0,
               "args": {"name": "scheduler (head)"}},
              {"ph": "M", "name": "process_sort_index", "pid": SCHEDULER_PID, "tid": 0, "args": {"sort_index": 0}}]
    pids, tids = {}, {}
    runs = []
    for row in rows:
        if row["started"] is None or row["node"] is None or row["worker"] is None:
            if row["ended"] is not None and row["state"] != "finished":
                events.append({"ph": "i", "s": "t", "name": f"{row['name']} ({row['state']}, not run)",
                               "cat": "task", "pid": SCHEDULER_PID, "tid": 0, "ts": _us(row["ended"]),
                               "args": {"task_id": row["task_id"], "state": row["state"]}})
            continue
        node, worker = row["node"], row["worker"]
        pid = pids.get(node)
        if pid is None:
            pid = pids[node] = len(pids) + 1
            events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                           "args": {"name": f"node {node}"}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                           "args": {"sort_index": pid}})
        tid = tids.get(worker)
        if tid is None:
            tid = tids[worker] = len(tids) + 1
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                           "args": {"name": f"worker {worker}"}})
        runs.append((pid, tid, row))

    previous_end = {}  # tid -> end of the worker's previous run
    runs.sort(key=lambda run: (run[1], run[2]["started"]))
    for pid, tid, row in runs:
        started = row["started"]
        finished = max(started, row["finished"] if row["finished"] is not None else started)
        submitted, ready, dispatched = row["submitted"], row["ready"], row["dispatched"]
        name = row["name"] or row["task_id"]
        args = {
            "task_id": row["task_id"], "state": row["state"], "node": row["node"], "worker": row["worker"],
            "attempts": row["attempts"], "submitted": submitted, "ready": ready, "dispatched": dispatched,
            "started": started, "finished": finished, "ended": row["ended"],
            "waiting_for_inputs_ms": _ms(submitted, ready), "queued_ms": _ms(ready, dispatched),
            "fetching_inputs_ms": _ms(dispatched, started), "running_ms": _ms(started, finished),
        }
        if dispatched is not None:
            fetch_from = max(dispatched, previous_end.get(tid, dispatched))
            if started - fetch_from >= 1e-6:
                events.append({"ph": "X", "name": "fetch inputs", "cat": "fetch", "pid": pid, "tid": tid,
                               "ts": _us(fetch_from), "dur": _us(started - fetch_from),
                               "args": {"task_id": row["task_id"], "task": name}})
        events.append({"ph": "X", "name": name, "cat": "task", "pid": pid, "tid": tid, "ts": _us(started),
                       "dur": _us(finished - started), "args": args})
        previous_end[tid] = finished
        # The scheduler's side: waiting for inputs, then queued for a worker.
        phases = []
        if submitted is not None and ready is not None and ready > submitted:
            phases.append(("waiting for inputs", submitted, ready))
        if ready is not None and dispatched is not None and dispatched > ready:
            phases.append(("queued", ready, dispatched))
        for phase, start, end in phases:
            common = {"cat": "scheduler", "name": f"{name}: {phase}", "pid": SCHEDULER_PID, "tid": 0,
                      "id": row["task_id"]}
            events.append({**common, "ph": "b", "ts": _us(start), "args": {"task_id": row["task_id"]}})
            events.append({**common, "ph": "e", "ts": _us(end)})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"producer": "orion.timeline", "clock": "unix epoch, microseconds",
                          "tasks": len(runs)}}


def write_trace(records, path):
    """Write the Chrome trace of ``records`` to ``path`` (atomically); return the path."""
    path = os.fspath(path)
    trace = chrome_trace(records)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(trace, f, separators=(",", ":"))
    os.replace(tmp, path)
    return path
