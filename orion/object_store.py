"""A thread-safe object store keyed by object id.

Each entry is either a value (whatever the runtime stores: a Python object in
the in-process runtime, serialized frames in the networked one), a
``Failed`` marker holding the scheduler's ``Failure``, or a ``Remote`` marker
for a large value that lives in a node's store (``orion.store``). Readers never poll: a
caller waiting for several ids registers one ``_Latch`` (a counter plus a
one-shot event, ``_Wakeup``) that the writers count down, so a ``put`` wakes only the
callers that wait for that id.
"""
from __future__ import annotations

import threading


class Failed:
    """Store entry for an object whose task failed, crashed or was cancelled."""

    __slots__ = ("failure",)

    def __init__(self, failure):
        self.failure = failure


class Holder(tuple):
    """Where a copy of a large object lives: ``(node id, object server
    address)``. A reader on that same node maps the file from the node's
    directories, which it knows itself; any other reader fetches it from the
    address (``orion.store.transfer``). A driver that put a value and serves it
    holds it under its own peer id."""

    __slots__ = ()

    def __new__(cls, node_id, address):
        return tuple.__new__(cls, (node_id, address))

    node_id = property(lambda self: self[0])
    address = property(lambda self: self[1])


class Remote:
    """Store entry for a large object kept outside this store: its size and
    the holders of its copies (the head's object directory entry; a driver or
    worker gets one instead of the value and fetches or maps it when used).
    ``holders`` is a tuple, replaced (never mutated) when copies come and go,
    so readers in other threads always see a consistent one."""

    __slots__ = ("size", "holders")

    def __init__(self, size, holders):
        self.size = size
        self.holders = tuple(holders)

    def __repr__(self):
        return f"Remote(size={self.size}, holders={[h.node_id for h in self.holders]})"


class _Wakeup:
    """A one-shot ``threading.Event`` (``set``, ``wait``, ``is_set``) made of
    one bare lock, held while unset: a ``get`` creates, waits on and wakes
    one per call, and ``Event``'s condition variable costs ~2 µs more each
    time (a lock, a deque, a waiter lock per wait)."""

    __slots__ = ("_lock",)

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self):
        try:
            self._lock.release()
        except RuntimeError:
            pass  # set already (a second setter, or a waiter between its acquire and release)

    def is_set(self):
        return not self._lock.locked()

    def wait(self, timeout=None):
        if not self._lock.acquire(True, -1 if timeout is None else timeout):
            return False
        self.set()  # it stays set, for any later wait
        return True


class _Latch:
    __slots__ = ("remaining", "event")

    def __init__(self, remaining):
        self.remaining = remaining
        self.event = _Wakeup()

    def count_down(self, _object_id=None):
        self.remaining -= 1
        if self.remaining <= 0:
            self.event.set()


class ObjectStore:
    def __init__(self):
        self._lock = threading.Lock()
        self._entries = {}
        self._waiters = {}  # object id -> list of callables(object_id), run under the lock

    def __contains__(self, object_id):
        return object_id in self._entries

    def __len__(self):
        return len(self._entries)

    def is_empty(self):
        """No entries, and nobody waits for one."""
        return not self._entries and not self._waiters

    def entries(self):
        """A list of the stored entries (values and ``Failed``), for sizing."""
        with self._lock:
            return list(self._entries.values())

    def put(self, object_id, entry):
        """Store ``entry`` (a value or ``Failed``) and wake whoever waits for it."""
        with self._lock:
            self._entries[object_id] = entry
            callbacks = self._waiters.pop(object_id, None)
            if callbacks:
                for callback in callbacks:
                    callback(object_id)

    def put_many(self, items):
        with self._lock:
            entries, waiters = self._entries, self._waiters
            for object_id, entry in items:
                entries[object_id] = entry
                callbacks = waiters.pop(object_id, None)
                if callbacks:
                    for callback in callbacks:
                        callback(object_id)

    def lookup(self, object_id, default=None):
        return self._entries.get(object_id, default)

    def delete(self, object_id):
        with self._lock:
            self._entries.pop(object_id, None)

    def delete_many(self, object_ids):
        with self._lock:
            pop = self._entries.pop
            for object_id in object_ids:
                pop(object_id, None)

    def wait(self, object_ids, num_ready=None, timeout=None, interrupt=None):
        """Block until ``num_ready`` of ``object_ids`` (default: all) are stored.

        Returns True when they are, False on timeout. ``interrupt`` is an
        optional callback registry used to wake the waiter early (cancel).
        Leaves no waiter behind in either case.
        """
        ids = list(dict.fromkeys(object_ids))
        if num_ready is None:
            num_ready = len(ids)
        with self._lock:
            entries = self._entries
            missing = [i for i in ids if i not in entries]
            still_needed = num_ready - (len(ids) - len(missing))
            if still_needed <= 0:
                return True
            if timeout is not None and timeout <= 0:
                return False
            latch = _Latch(still_needed)
            for object_id in missing:
                self._waiters.setdefault(object_id, []).append(latch.count_down)
        if interrupt is not None:
            interrupt(latch.event)
        try:
            return latch.event.wait(timeout) and latch.remaining <= 0
        finally:
            if latch.remaining > 0:
                self._forget(missing, latch.count_down)

    def add_callback(self, object_id, callback):
        """Call ``callback(object_id)`` once the object is stored (now if it is).
        The callback runs under the store's lock: keep it short, never block."""
        with self._lock:
            if object_id not in self._entries:
                self._waiters.setdefault(object_id, []).append(callback)
                return
        callback(object_id)

    def _forget(self, object_ids, callback):
        with self._lock:
            for object_id in object_ids:
                callbacks = self._waiters.get(object_id)
                if callbacks:
                    try:
                        callbacks.remove(callback)
                    except ValueError:
                        pass
                    if not callbacks:
                        del self._waiters[object_id]
