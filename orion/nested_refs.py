"""What keeps an object alive, at the head, while its ref travels beyond its owner.

An owner releases an object once no ``ObjectRef`` in its own process names
it. But a ref also travels: pickled inside a task's arguments
(``reduce.remote([a, b])``: the task gets the ref, not the value), inside a
value (``put([a])``, a task returning ``[child.remote()]``), and from there
into any process that unpickles it. ``NestedRefs`` counts, per object, what
holds it beyond its owner:

* each live task whose arguments name it, from its submission until it is
  published or fails for good (a retry still holds it);
* each kept lineage entry of such a task (the spec of a task whose large
  result is still referenced: re-running it unpickles the same arguments);
* each stored value whose pickle names it (a *container*), until that
  value is freed;
* each process that *borrows* it: it unpickled the ref (even its owner,
  which may have released the object before the ref came back) and still
  has an ``ObjectRef`` for it (its client says so before anything it got the ref
  from can go, and says when its ObjectRef dies; a process that dies lets
  go of all it borrowed). A ref pickled where nothing records where it went
  (say into a function's closure) is borrowed for good.

The owner's release of a held object waits here and goes on to the scheduler
when the count reaches zero; the scheduler then frees it once no task needs
it as an input. Plain data, no I/O: the ``Head`` feeds it and forwards the
ids it returns as releases.
"""
from __future__ import annotations


class NestedRefs:
    __slots__ = ("_holders", "by_task", "containers", "_borrowers", "_released")

    def __init__(self):
        self._holders = {}  # object id -> how many tasks, lineage entries, containers and borrowers hold it
        # task id -> the object ids its arguments hold; container id -> the ids
        # its value names (callers on hot paths test these dicts before calling)
        self.by_task = {}
        self.containers = {}
        self._borrowers = {}  # peer -> the ids it borrows
        self._released = set()  # held ids whose owner released them meanwhile

    def __bool__(self):
        """Whether anything is held (a cheap test for the hot paths)."""
        return bool(self._holders)

    def holds(self, object_id):
        """How many tasks, lineage entries, containers and borrowers hold ``object_id``."""
        return self._holders.get(object_id, 0)

    # ------------------------------------------------------------- events
    def task_submitted(self, task_id, object_ids):
        """A task whose arguments hold these objects is live (a submission
        of a task already live changes nothing)."""
        self._hold_for(self.by_task, task_id, object_ids)

    def task_ended(self, task_id):
        """The task is published or failed for good: the ids now free to go."""
        return self._let_go_of(self.by_task, task_id)

    def lineage_kept(self, object_ids):
        """A lineage entry of a task holding these objects is kept."""
        self._hold(object_ids)

    def lineage_dropped(self, object_ids):
        """That lineage entry is gone: the ids now free to go."""
        return self._let_go(object_ids)

    def contained(self, container_id, object_ids):
        """The value of ``container_id`` names these objects (a value stored
        again, by a task re-run, counts once)."""
        self._hold_for(self.containers, container_id, object_ids)

    def container_freed(self, container_id):
        """The container's value is gone: the ids now free to go."""
        return self._let_go_of(self.containers, container_id)

    def borrowed(self, peer, object_ids):
        """``peer`` holds a ref to each of these now (once per peer and id)."""
        mine = self._borrowers.setdefault(peer, set())
        new = [object_id for object_id in object_ids if object_id not in mine]
        mine.update(new)
        self._hold(new)

    def unborrowed(self, peer, object_ids):
        """``peer`` no longer holds these: the ids now free to go."""
        mine = self._borrowers.get(peer)
        if not mine:
            return []
        gone = [object_id for object_id in object_ids if object_id in mine]
        mine.difference_update(gone)
        return self._let_go(gone)

    def peer_gone(self, peer):
        """``peer``'s process is gone, and its borrows with it."""
        mine = self._borrowers.pop(peer, None)
        return self._let_go(mine) if mine else []

    def releasable(self, object_ids):
        """Of the ids an owner releases, those that may go to the scheduler
        now; held ones wait for their holders."""
        holders, released = self._holders, self._released
        now = []
        for object_id in object_ids:
            if object_id in holders:
                released.add(object_id)
            else:
                now.append(object_id)
        return now

    # ------------------------------------------------------------ internals
    def _hold_for(self, table, key, object_ids):
        if object_ids and key not in table:
            table[key] = object_ids
            self._hold(object_ids)

    def _let_go_of(self, table, key):
        object_ids = table.pop(key, None)
        return self._let_go(object_ids) if object_ids else []

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
                free.append(object_id)
        return free


__all__ = ["NestedRefs"]
