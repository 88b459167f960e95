"""Mappings of large object files, kept for reuse within one process.

Mapping a 100 MiB file costs ~9 ms of page-table work (``MAP_POPULATE``), and
a freed object's file is recycled for the next object of its size (see
``shm_format``). A process that maps the recycled file again would redo that
work for pages it already had mapped. So this cache keeps, per file (device
and inode), the mapping of each large object file read in shared memory; the
next object written into the same file is read through the same mapping,
whose pages are still mapped (a writer overwrites them in place).

Pins (see ``shm_format``): while anything made from a mapping is alive (a
memoryview slice, a numpy array) the mapping is *leased* and its file holds
the reader's shared ``flock``, so no writer may recycle it. A lease ends when
nothing refers to the mapping but the cache (its reference count says so);
``release_idle`` then drops the lock, so the file can be recycled, and keeps
the mapping *idle*. Leases end when a client lets go of objects and after a
worker's task (they call ``release_idle``), and at every read. Idle mappings
are bounded (``MAX_IDLE``, ``MAX_IDLE_BYTES``), dropped least recently used
first, and dropped at once when their file is gone (unlinked: spilled, or
its memory given back), so they hold no memory of their own.

Only files of at least ``shm_format.RECYCLE_MIN`` bytes come here (smaller
ones are cheap to map and never recycled).

Writers keep theirs too (``WRITERS``): a writable mapping of each recycled
file they wrote, used only while they hold that file's exclusive lock, for the
next time they recycle the same file (a copy into pages already mapped). A
few at most, dropped once their file is gone (``release_idle``).
"""
from __future__ import annotations

import collections
import fcntl
import mmap
import os
import sys
import threading

MAX_IDLE = 8  # idle mappings kept
MAX_IDLE_BYTES = 2 << 30
# Mappings tracked at all (leased or idle): each sweep looks at every one, so
# past this many a large object is mapped on its own, as a small one is.
MAX_ENTRIES = 256

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_IDLE_REFS = 2  # sys.getrefcount of an idle mapping: the entry's reference and the argument


def _file_gone(stat_fd):
    """Whether the file open as ``stat_fd`` lost its last name (its memory goes
    once nothing maps it)."""
    try:
        return os.fstat(stat_fd).st_nlink == 0
    except OSError:
        return True


def _unmap(mm, stat_fd):
    try:
        mm.close()
    except BufferError:  # exported after all: the mapping goes with its last view
        pass
    os.close(stat_fd)


class _Entry:
    __slots__ = ("mm", "size", "key", "stat_fd", "lock_fd")

    def __init__(self, mm, size, key, stat_fd, lock_fd):
        self.mm = mm
        self.size = size
        self.key = key
        self.stat_fd = stat_fd  # to see whether the file still has a name (st_nlink)
        self.lock_fd = lock_fd  # holds the shared lock while leased; None while idle


class MappingCache:
    def __init__(self):
        self._lock = threading.Lock()
        self._entries = {}  # (st_dev, st_ino) -> _Entry
        self._idle = collections.OrderedDict()  # keys of idle entries, least recently used first

    def lease(self, fd, stat):
        """A read-only mapping of the file open as ``fd``, which the caller has
        pinned (shared lock) and verified; the cache takes ``fd`` over. The
        caller must hold the returned mapping until it has made its views."""
        key = (stat.st_dev, stat.st_ino)
        size = stat.st_size
        with self._lock:
            self._release_idle()
            entry = self._entries.get(key)
            if entry is not None and entry.size != size:
                if entry.lock_fd is None:
                    self._drop(entry)  # recycled for an object of another size: map afresh
                else:
                    # Leased, yet another size: cannot be (pinned files are not
                    # rewritten); be safe and map this one on its own.
                    return self._new_mapping(fd, size, key, cache=False)
                entry = None
            if entry is None:
                return self._new_mapping(fd, size, key, cache=len(self._entries) < MAX_ENTRIES)
            if entry.lock_fd is None:
                # Idle: lease it again; the caller's lock becomes its pin.
                entry.lock_fd = fd
                del self._idle[key]
            else:
                os.close(fd)  # leased already (the same object read twice): one pin suffices
            return entry.mm

    def _new_mapping(self, fd, size, key, cache):
        try:
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        if not cache:
            os.close(fd)  # the mapping's own duplicate keeps the pin (see shm_format)
            return mm
        self._entries[key] = _Entry(mm, size, key, os.dup(fd), fd)
        return mm

    def release_idle(self):
        """End the leases nothing uses any more (their files may be recycled)."""
        with self._lock:
            self._release_idle()

    def _release_idle(self):
        for entry in list(self._entries.values()):
            if entry.lock_fd is not None and sys.getrefcount(entry.mm) <= _IDLE_REFS:
                # Nothing made from it is alive. Unlock explicitly: when the file was
                # first mapped, the mapping's own duplicate of the descriptor shares
                # the locked open file description, so closing ours would not do.
                fcntl.flock(entry.lock_fd, fcntl.LOCK_UN)
                os.close(entry.lock_fd)
                entry.lock_fd = None
                self._idle[entry.key] = None
        # Idle mappings of files that lost their name hold memory for nothing.
        for key in list(self._idle):
            entry = self._entries[key]
            if _file_gone(entry.stat_fd):
                self._drop(entry)
        idle_bytes = sum(self._entries[key].size for key in self._idle)
        while self._idle and (len(self._idle) > MAX_IDLE or idle_bytes > MAX_IDLE_BYTES):
            entry = self._entries[next(iter(self._idle))]
            idle_bytes -= entry.size
            self._drop(entry)

    def _drop(self, entry):
        """Forget an idle entry and unmap it (nothing refers to it but us)."""
        self._idle.pop(entry.key, None)
        del self._entries[entry.key]
        _unmap(entry.mm, entry.stat_fd)

    def stats(self):
        with self._lock:
            leased = sum(1 for e in self._entries.values() if e.lock_fd is not None)
            return {"leased": leased, "idle": len(self._idle)}


class WriterMappings:
    """Writable mappings of recycled files this process wrote, for its next
    write into the same file (see ``shm_format.write_object``). A writer uses
    one only while it holds the file's exclusive lock, so they carry no pins;
    bounded like idle reader mappings, and dropped once their file is gone."""

    MAX = 4

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = collections.OrderedDict()  # (st_dev, st_ino) -> (mm, size, stat_fd)

    def mapping(self, fd, size):
        """A writable mapping of ``size`` bytes of the file open (and locked) as ``fd``."""
        stat = os.fstat(fd)
        key = (stat.st_dev, stat.st_ino)
        with self._lock:
            self._sweep()
            entry = self._entries.get(key)
            if entry is not None:
                if entry[1] == size:
                    self._entries.move_to_end(key)
                    return entry[0]
                self._drop(key)  # resized since: map it afresh
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self._entries[key] = (mm, size, os.dup(fd))
            while len(self._entries) > self.MAX:
                self._drop(next(iter(self._entries)))
            return mm

    def _sweep(self):
        for key, (_, _, stat_fd) in list(self._entries.items()):
            if _file_gone(stat_fd):
                self._drop(key)

    def _drop(self, key):
        mm, _, stat_fd = self._entries.pop(key)
        _unmap(mm, stat_fd)

    def sweep(self):
        """Drop the mappings of files that lost their name (their memory goes)."""
        with self._lock:
            self._sweep()


CACHE = MappingCache()
WRITERS = WriterMappings()


def release_idle():
    """End the readers' leases nothing uses any more, and let go of the
    mappings of files that are gone (see the module docstring)."""
    # Called after every task and every freed batch: a process that maps
    # nothing (small values only) skips the locks. (A mapping another thread
    # adds meanwhile is looked at by the next call.)
    if CACHE._entries:
        CACHE.release_idle()
    if WRITERS._entries:
        WRITERS.sweep()
