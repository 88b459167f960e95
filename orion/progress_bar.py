"""Progress over results: ``orion.progress(refs)`` and ``orion.get(refs, progress=True)``.

Both follow the results into the client's local store: a callback per object
puts its id on a queue the moment its value (or failure) lands, so the caller
sleeps on the queue (no polling) and sees results in completion order. The
bar is ``tqdm``'s (done/total, rate, ETA), on stderr, and only when stderr is
a terminal (``disable=None``); elsewhere nothing is printed. Inside a task
there is no bar, and the worker's own ``wait`` does the waiting (a worker
process only receives values while it waits on its socket).
"""
from __future__ import annotations

import queue
import time

from . import context
from .client import _as_ref_list, _check_timeout
from .errors import OrionError

_CLOSED_CHECK = 1.0  # seconds between checks that the client was not shut down meanwhile


def _bar(total, desc):
    from tqdm import tqdm  # imported on first use: plain gets never pay for it

    return tqdm(total=total, desc=desc, unit="task", disable=None, dynamic_ncols=True)


class _Arrivals:
    """Ids of ``object_ids`` in the order their values reach ``client.store``."""

    def __init__(self, client, object_ids):
        self.client = client
        self.queue = queue.SimpleQueue()
        store = client.store
        missing = [i for i in object_ids if i not in store]
        if missing:
            client._request(missing)
        for object_id in object_ids:
            store.add_callback(object_id, self.queue.put)  # runs under the store's lock: just a put
        self._ids = object_ids

    def next(self, deadline=None):
        """The next id to arrive; None once ``deadline`` (monotonic) passed."""
        while True:
            wait = _CLOSED_CHECK if deadline is None else min(_CLOSED_CHECK, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                return self.queue.get(timeout=wait)
            except queue.Empty:
                if self.client.closed:
                    raise OrionError("the Orion client was shut down while waiting for results") from None

    def close(self):
        """Unregister the callbacks of values that have not arrived."""
        store = self.client.store
        forget = getattr(store, "_forget", None)
        if forget is not None:
            forget([i for i in self._ids if i not in store], self.queue.put)


def wait_with_bar(client, object_ids, timeout, desc=None):
    """``Client._wait_for`` for all of ``object_ids``, showing a bar. True when all are ready."""
    if context.current.worker is not None:
        return client._wait_for(object_ids, None, timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    arrivals = _Arrivals(client, object_ids)
    bar = _bar(len(object_ids), desc)
    try:
        for _ in object_ids:
            if arrivals.next(deadline) is None:
                return False
            bar.update(1)
        return True
    finally:
        bar.close()
        arrivals.close()


def as_completed(client, refs, desc=None, timeout=None):
    """An iterator over the values of ``refs`` in completion order (see ``orion.progress``).
    A failed task's error is raised when its turn comes, as ``get`` would."""
    ref_list, _ = _as_ref_list(refs, "progress")
    timeout = _check_timeout(timeout)
    client._check_open()
    if context.current.worker is not None:
        return _in_task(client, ref_list, timeout)
    return _with_bar(client, [r.id for r in ref_list], desc, timeout)


def _with_bar(client, object_ids, desc, timeout):
    from .errors import GetTimeoutError

    deadline = None if timeout is None else time.monotonic() + timeout
    arrivals = _Arrivals(client, object_ids)
    bar = _bar(len(object_ids), desc)
    try:
        for _ in object_ids:
            object_id = arrivals.next(deadline)
            if object_id is None:
                raise GetTimeoutError(f"progress timed out after {timeout} s")
            bar.update(1)
            yield client._value(object_id)
    finally:
        bar.close()
        arrivals.close()


def _in_task(client, ref_list, timeout):
    from .errors import GetTimeoutError

    deadline = None if timeout is None else time.monotonic() + timeout
    counts = {}
    for ref in ref_list:
        counts[ref] = counts.get(ref, 0) + 1
    pending = list(counts)
    while pending:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = client.wait(pending, 1, remaining)
        if not ready:
            raise GetTimeoutError(f"progress timed out after {timeout} s")
        for _ in range(counts[ready[0]]):
            yield client._value(ready[0].id)
