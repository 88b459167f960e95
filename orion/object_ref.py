"""``ObjectRef``: a handle to a value that a task will produce (or ``put`` stored)."""
from __future__ import annotations


class ObjectRef:
    """Hashable, comparable by id, picklable (it travels as its id alone)."""

    __slots__ = ("id", "__weakref__")

    def __init__(self, object_id):
        self.id = object_id

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"ObjectRef({self.id})"

    def __reduce__(self):
        return ObjectRef, (self.id,)

    def future(self):
        """A ``concurrent.futures.Future`` that completes with the value (or error)."""
        from .api import _current_client

        return _current_client().future(self)

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()
