"""``ObjectRef``: a handle to a value that a task will produce (or ``put`` stored).

Within a process there is one ``ObjectRef`` instance per object id (copies,
unpickled ones included, are the same instance), so the death of that
instance means the process can no longer name the object. ``LIFETIMES``
notes those deaths (from a weakref callback: no locks, no allocation beyond
a deque append), the instances that arrived by unpickling, and the ids
pickled where nothing records where they went; the client turns these into
batched messages to the head: releases of its own objects, borrows and
unborrows (see ``Client._flush_releases`` and ``orion.nested_refs``).
"""
from __future__ import annotations

import collections
import threading
import weakref


class _Lifetimes:
    def __init__(self):
        self._live = {}  # object id -> weakref to its one ObjectRef instance
        self._lock = threading.Lock()
        self.released = collections.deque()  # ids whose ObjectRef died (not yet handled)
        # Ids pickled where nothing records it (not into a task's arguments, a
        # put or a result; say into a function's closure): whoever unpickles
        # them is unknown, so they are kept for good. ``escapes``: the same ids,
        # not yet handled by the client.
        self.escaped = set()
        self.escapes = collections.deque()
        # Ids whose live instance was made by unpickling: borrowed (the head
        # keeps the object while we hold it), and one of ours that a value
        # brings back after we let go of it is asked for again.
        # ``arrived``: the same ids, not yet handled by the client.
        self.revived = set()
        self.arrived = collections.deque()
        self._recording = threading.local()

    def instance(self, cls, object_id, unpickled=False):
        with self._lock:
            ref = self._live.get(object_id)
            obj = ref() if ref is not None else None
            if obj is None:
                obj = object.__new__(cls)
                obj.id = object_id
                self._live[object_id] = weakref.ref(obj, lambda ref, oid=object_id: self._died(oid, ref))
                if unpickled:
                    self.revived.add(object_id)
                    self.arrived.append(object_id)
            return obj

    def _died(self, object_id, ref):
        # A weakref callback: runs at any moment, on any thread, so it takes no
        # lock (the dict, set and deque operations are atomic).
        if self._live.get(object_id) is ref:
            self._live.pop(object_id, None)
            self.revived.discard(object_id)
            self.released.append(object_id)

    def pending(self):
        """Whether the client has deaths, arrivals or escapes to hand over."""
        return bool(self.released or self.arrived or self.escapes)

    def pickled(self, object_id):
        recorder = getattr(self._recording, "ids", None)
        if recorder is not None:
            recorder.append(object_id)
        elif object_id not in self.escaped:
            self.escaped.add(object_id)
            self.escapes.append(object_id)

    def recording(self):
        """A context manager that collects the ids pickled meanwhile on this
        thread (they travel with what is being pickled, which says so)
        instead of marking them escaped; ``as`` gives their list."""
        return _Recording(self._recording)


class _Recording:
    """(A class rather than a generator: it runs around every pickled result.)"""

    __slots__ = ("_local", "_outer")

    def __init__(self, local):
        self._local = local

    def __enter__(self):
        self._outer = getattr(self._local, "ids", None)
        ids = self._local.ids = []
        return ids

    def __exit__(self, *exc_info):
        self._local.ids = self._outer


LIFETIMES = _Lifetimes()


class ObjectRef:
    """Hashable, comparable by id, picklable (it travels as its id alone)."""

    __slots__ = ("id", "__weakref__")

    def __new__(cls, object_id):
        # (no __init__: the instance may be an existing one, its id set once)
        return LIFETIMES.instance(cls, object_id)

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"ObjectRef({self.id})"

    def __reduce__(self):
        LIFETIMES.pickled(self.id)
        return _unpickle, (self.id,)

    def future(self):
        """A ``concurrent.futures.Future`` that completes with the value (or error)."""
        from .api import _current_client

        return _current_client().future(self)

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()


def _unpickle(object_id):
    """An ObjectRef that arrived inside a pickle (see ``_Lifetimes.revived``)."""
    return LIFETIMES.instance(ObjectRef, object_id, unpickled=True)
