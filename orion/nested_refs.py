"""What keeps alive, at the head, an object whose ref travels inside a task's arguments.

A ref nested in a task's arguments (``reduce.remote([a, b])``) is not a
dependency: the task gets the ref, not the value, and may ``get`` it at any
moment while it runs. So its object must outlive the owner's own copy of the
ref for as long as the task may use it. ``NestedRefs`` counts, per object,
what holds it that way:

* each live task whose arguments name it, from its submission until it is
  published or fails for good (a retry still holds it);
* each lineage entry kept for a task that takes it (the spec of a task whose
  large result is still referenced: re-running it unpickles the same
  arguments, see ``Head._record_large``);

and keeps a set of objects pinned for good: those a task *kept* — its worker
still had the ``ObjectRef`` once the task ended, or pickled it into a result,
a put or an argument of its own. The task's process may use such a ref at any
later time, which the head cannot see, so nothing ever frees that object (as
every escaped ref was kept before; Ray would track the worker as a borrower).

The owner's release of a held object waits here and goes on to the scheduler
when the count reaches zero; the scheduler then frees it once no task needs
it as an input. Plain data, no I/O: the ``Head`` feeds it and forwards what
it returns.
"""
from __future__ import annotations


class NestedRefs:
    __slots__ = ("_holders", "by_task", "_pinned", "_released")

    def __init__(self):
        self._holders = {}  # object id -> how many live tasks and lineage entries hold it
        # task id -> the object ids its arguments hold (a caller on a hot path
        # tests this dict before calling task_ended: most tasks hold nothing)
        self.by_task = {}
        self._pinned = set()  # ids some task kept: never released
        self._released = set()  # held ids whose owner released them meanwhile

    def __bool__(self):
        """Whether anything is held or pinned (a cheap test for the hot paths)."""
        return bool(self._holders or self._pinned)

    def holds(self, object_id):
        """How many tasks and lineage entries hold ``object_id`` now."""
        return self._holders.get(object_id, 0)

    def is_pinned(self, object_id):
        return object_id in self._pinned

    # ------------------------------------------------------------- events
    def task_submitted(self, task_id, object_ids):
        """A task whose arguments hold these objects is live (a submission
        of a task already live changes nothing)."""
        if object_ids and task_id not in self.by_task:
            self.by_task[task_id] = object_ids
            self._hold(object_ids)

    def task_ended(self, task_id):
        """The task is published or failed for good: the ids now free to go."""
        object_ids = self.by_task.pop(task_id, None)
        return self._let_go(object_ids) if object_ids else []

    def lineage_kept(self, object_ids):
        """A lineage entry of a task holding these objects is kept."""
        self._hold(object_ids)

    def lineage_dropped(self, object_ids):
        """That lineage entry is gone: the ids now free to go."""
        return self._let_go(object_ids)

    def kept(self, object_ids):
        """A task kept these refs: pin their objects for good."""
        self._pinned.update(object_ids)
        self._released.difference_update(object_ids)

    def releasable(self, object_ids):
        """Of the ids an owner releases, those that may go to the scheduler
        now; held ones wait for their holders, pinned ones never go."""
        pinned, holders, released = self._pinned, self._holders, self._released
        now = []
        for object_id in object_ids:
            if object_id in pinned:
                continue
            if object_id in holders:
                released.add(object_id)
            else:
                now.append(object_id)
        return now

    # ------------------------------------------------------------ internals
    def _hold(self, object_ids):
        holders = self._holders
        for object_id in object_ids:
            holders[object_id] = holders.get(object_id, 0) + 1

    def _let_go(self, object_ids):
        holders, released = self._holders, self._released
        free = []
        for object_id in object_ids:
            count = holders.get(object_id, 0) - 1
            if count > 0:
                holders[object_id] = count
                continue
            holders.pop(object_id, None)
            if object_id in released:
                released.discard(object_id)
                if object_id not in self._pinned:
                    free.append(object_id)
        return free


__all__ = ["NestedRefs"]
