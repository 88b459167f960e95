"""What the head remembers about each task, for the timeline, metrics and dashboard.

``Head`` calls these hooks from the one thread (or under the one lock) that
owns it, as it accepts submissions and carries out the scheduler's commands;
the scheduler itself stays clock-free. Each hook costs a few list writes
and dictionary operations per task. Times are wall-clock ``time.time()``
seconds, so times taken in different processes on one machine line up:

* ``submitted``: the head accepted the task;
* ``ready``: its last input was stored at the head (its producer ended), or
  ``submitted`` when it has none; a retried task is ready again when retried;
* ``dispatched``: the head sent it to a worker (with its inputs attached);
* ``started`` / ``finished``: the worker ran it (reported by the worker);
* ``ended``: the head accepted its result or failure.

Finished, failed and cancelled tasks move to a ring of the last
``ring_size`` tasks; running and queued ones stay in the index until they end.
"""
from __future__ import annotations

import time
from collections import deque

RING_SIZE = 100_000  # ended tasks kept for the timeline
ERRORS_SIZE = 100  # recent failures kept for the dashboard
MAX_NAMES = 1000  # distinct task names counted; later names are counted as OTHER
OTHER = "<other>"

# Indexes into the per-name counters.
SUBMITTED, FINISHED, FAILED, CANCELLED, RETRIED = range(5)
COUNTER_NAMES = ("submitted", "finished", "failed", "cancelled", "retried")

# The fields of a timeline record, in order (records travel as msgpack arrays).
RECORD_FIELDS = ("task_id", "name", "state", "node", "worker", "attempts", "submitted", "ready", "dispatched",
                 "started", "finished", "ended")


# Positions in a record (a list while the task runs, a tuple once it ended).
(_ID, _NAME, _STATE, _NODE, _WORKER, _ATTEMPTS, _SUBMITTED, _READY, _DISPATCHED, _STARTED, _FINISHED,
 _ENDED) = range(len(RECORD_FIELDS))


class TaskLog:
    """Records are plain lists and tuples, not objects: a tuple of strings and
    floats is untracked by the garbage collector once it ended, so a full ring
    costs the collector nothing. A task's index entry is ``(name, submitted,
    has inputs)`` until it is first dispatched, its record (a list) while it
    runs or waits for a retry, and its ended record (a tuple, also in the ring)."""

    def __init__(self, ring_size=RING_SIZE, clock=time.time):
        self.ring_size = ring_size
        self.clock = clock
        self._index = {}  # task id -> (name, submitted, has inputs) | record list | ended record tuple
        self._ring = deque()  # ended records, oldest first
        self._inflight = {}  # task id -> record list: dispatched, not ended
        self.counters = {}  # task name -> [submitted, finished, failed, cancelled, retried]
        self.errors = deque(maxlen=ERRORS_SIZE)
        self._last_failure = None

    # ------------------------------------------------------------ hooks
    def submitted(self, specs):
        now = self.clock()
        index, counters = self._index, self.counters
        # The tasks of one batch share their (name, submitted, has inputs)
        # entry: a million queued tasks then cost one dict slot each here.
        entries = {}
        for spec in specs:
            task_id = spec.task_id
            old = index.get(task_id)
            if old is not None and (type(old) is list or len(old) == 3):
                continue  # a driver replaying a task this head already tracks
            name = spec.name
            counter = counters.get(name)
            if counter is None:
                counter = self._counter(name)
            counter[SUBMITTED] += 1
            has_inputs = bool(spec.dependencies)
            entry = entries.get((name, has_inputs))
            if entry is None:
                entry = entries[(name, has_inputs)] = (name, now, has_inputs)
            index[task_id] = entry

    def dispatched(self, spec, worker_id, node_id, now):
        task_id = spec.task_id
        entry = self._index.get(task_id)
        if type(entry) is tuple:
            if len(entry) != 3:
                return  # ended: a stale dispatch cannot happen, but never resurrect a record
            name, submitted, has_inputs = entry
            ready = self._ready_time(submitted, spec.dependencies, now) if has_inputs else submitted
            record = [task_id, name, "dispatched", node_id, worker_id, 1, submitted, ready, now, None, None, None]
            self._index[task_id] = record
        elif entry is None:
            return
        else:  # dispatched again: after a retry, or sent back by a busy worker
            record = entry
            record[_STATE], record[_NODE], record[_WORKER], record[_DISPATCHED] = "dispatched", node_id, worker_id, now
            record[_ATTEMPTS] += 1
        self._inflight[task_id] = record

    def reported(self, worker_id, task_id, times):
        """A worker says when it ran the task; kept unless the report is stale."""
        record = self._inflight.get(task_id)
        if record is not None and record[_WORKER] == worker_id:
            record[_STARTED], record[_FINISHED] = times

    def finished(self, task_id, now):
        record = self._inflight.pop(task_id, None)  # the hot path: _take and _count inlined
        if record is None:
            record = self._take(task_id)
            if record is None:
                return
        counter = self.counters.get(record[_NAME])
        if counter is None:
            counter = self._counter(record[_NAME])
        counter[FINISHED] += 1
        self._end(record, "finished", now)

    def failed(self, task_id, failure, now):
        record = self._take(task_id)
        name = record[_NAME] if record is not None else "?"
        cancelled = failure.kind == "cancelled"
        self._count(name, CANCELLED if cancelled else FAILED)
        if record is not None:
            self._end(record, "cancelled" if cancelled else "failed", now)
        if cancelled:
            return
        if failure is self._last_failure and self.errors:
            # The same failure reaching a dependent: count it, do not repeat it.
            self.errors[-1]["dependents"] += 1
            return
        self._last_failure = failure
        self.errors.append({  # the payload (pickled exception and traceback) is read when shown
            "time": now, "task_id": task_id, "name": name, "kind": failure.kind, "message": failure.message,
            "payload": failure.payload, "node": record[_NODE] if record else None,
            "worker": record[_WORKER] if record else None, "dependents": 0,
        })

    def retried(self, task_id, now):
        record = self._inflight.pop(task_id, None)
        if record is None:
            return
        self._count(record[_NAME], RETRIED)
        record[_STATE], record[_READY] = "submitted", now
        record[_NODE] = record[_WORKER] = record[_DISPATCHED] = record[_STARTED] = record[_FINISHED] = None

    # ------------------------------------------------------------ queries (under the head's lock)
    def records(self):
        """Timeline records of the ended tasks in the ring plus those running now."""
        records = list(self._ring)
        records.extend(list(record) for record in self._inflight.values())
        return records

    def recent(self, count):
        """Records of up to ``count`` most recently ended tasks, then those running now."""
        records = _tail(self._ring, count)
        records.extend(list(record) for record in self._inflight.values())
        return records

    def inflight_by_node(self, task_state):
        """``{node id: {state: count}}`` of dispatched tasks, ``task_state`` being the
        scheduler's query (running, or assigned: queued behind a running task)."""
        result = {}
        for task_id, record in self._inflight.items():
            state = task_state(task_id)
            if state is None:
                continue
            per_node = result.get(record[_NODE])
            if per_node is None:
                per_node = result[record[_NODE]] = {}
            per_node[state] = per_node.get(state, 0) + 1
        return result

    def totals(self):
        """Counts over all names (a failed total includes the cancelled, as ``FailTask`` does)."""
        columns = [sum(column) for column in zip(*self.counters.values())] or [0] * len(COUNTER_NAMES)
        return {"submitted": columns[SUBMITTED], "finished": columns[FINISHED],
                "failed": columns[FAILED] + columns[CANCELLED], "retried": columns[RETRIED]}

    def counter_table(self):
        return {name: dict(zip(COUNTER_NAMES, values)) for name, values in self.counters.items()}

    # ------------------------------------------------------------ internals
    def _take(self, task_id):
        """The task's record as a list, out of the in-flight table; None if unknown or ended."""
        record = self._inflight.pop(task_id, None)
        if record is not None:
            return record
        entry = self._index.get(task_id)
        if type(entry) is list:
            return entry  # waiting for a retry
        if type(entry) is tuple and len(entry) == 3:  # never dispatched
            name, submitted, _ = entry
            return [task_id, name, "submitted", None, None, 0, submitted, None, None, None, None, None]
        return None

    def _counter(self, name):
        counters = self.counters
        counter = counters.get(name)
        if counter is None:
            if len(counters) >= MAX_NAMES and OTHER in counters:
                return counters[OTHER]
            if len(counters) >= MAX_NAMES - 1:
                name = OTHER
            counter = counters.setdefault(name, [0, 0, 0, 0, 0])
        return counter

    def _count(self, name, which):
        counter = self.counters.get(name)
        if counter is None:
            counter = self._counter(name)
        counter[which] += 1

    def _ready_time(self, ready, dependencies, now):
        index = self._index
        for dep in dependencies:
            producer = index.get(dep[:-4])  # an object id is its task's id plus 4 hex digits
            if type(producer) is tuple and len(producer) > 3:
                ended = producer[_ENDED]
                if ended > ready:
                    ready = ended
        return min(ready, now)

    def _end(self, record, state, now):
        record[_STATE] = state
        record[_ENDED] = now
        ended = tuple(record)
        self._index[record[_ID]] = ended
        ring = self._ring
        ring.append(ended)
        if len(ring) > self.ring_size:
            old = ring.popleft()
            if self._index.get(old[_ID]) is old:
                del self._index[old[_ID]]


def _tail(ring, count):
    """The last ``count`` items of a deque (as lists), oldest first, without copying it all."""
    items = []
    for i, entry in enumerate(reversed(ring)):
        if i >= count:
            break
        items.append(list(entry))
    items.reverse()
    return items
