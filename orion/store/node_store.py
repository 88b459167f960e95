"""One node's store of large objects.

Each object is one file (see ``shm_format``) named by its object id, in a
shared-memory directory that every process of the node can map read-only
without copies::

    <shm root>/orion-<node id>-<pid>/<object id>          in memory (/dev/shm)
    <temp dir>/orion-spill-<node id>-<pid>/<object id>    spilled to disk

The store accounts the bytes in shared memory and keeps them within
``memory_limit``: when a newly sealed object pushes usage over the limit, the
least recently used objects move to the spill directory. An object larger than
the limit is written to the spill directory directly.

Writers may be other processes of the node: they ask ``path_for_new`` where to
write, write the file with ``shm_format.write_object`` (atomic rename), and the
node calls ``sealed``. Readers in other processes know only the two
directories and use ``locate_object`` / ``open_object``.

A reader that checks shared memory first and the spill directory second always
finds an object that exists, because spilling copies the file into the spill
directory (under a temporary name, renamed into place) *before* it unlinks the
shared-memory file. Freeing or spilling unlinks files (or recycles them, see
below); readers that already mapped one keep reading it, as unlink leaves
open mappings intact.

Freed files are recycled (see ``shm_format``): ``free`` moves the file of a
large object held in shared memory (``RECYCLE_MIN`` bytes or more) into the
pool ``<shm dir>/.free/`` instead of unlinking it, and the next writer of a
similar size, in any process of the node, claims it and overwrites it, which
saves the kernel zeroing fresh pages. Readers pin what they map, so a freed
object that is still mapped is never overwritten: writers skip (and unlink)
such a file. The pool is memory too: it holds at most ``POOL_MAX_FILES``
files and ``min(memory_limit / 4, POOL_MAX_BYTES)`` bytes, counts towards the
limit, and when a sealed object pushes usage over the limit pool files go,
oldest first, before any live object is spilled. Writers in other processes
take files out of the pool behind the node's back, so the node lists the pool
directory (names only: they carry the size) whenever it needs its size.

The directories carry the owner's pid, so ``NodeStore.cleanup_stale`` can find
and remove what a process that died without ``close`` left behind; the pool is
inside the shared-memory directory and goes with it.
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import tempfile
import threading
import weakref

from .shm_format import (RECYCLE_MIN, object_size, pool_files, pool_name, read_object, recycle_dir, temp_path,
                         write_object)

_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")
_STORE_DIR = re.compile(r"orion-[0-9A-Za-z_-]+-([0-9]+)")
_SIZE = re.compile(r"\s*([0-9]+|[0-9]*\.[0-9]+)\s*([A-Za-z]*)\s*")
_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10 ** 3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10 ** 6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10 ** 9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10 ** 12,
}
MEMORY_ENV = "ORION_OBJECT_STORE_MEMORY"

# Bounds of the pool of recycled files: a few files keep listing it cheap, and
# memory the pool holds is memory no object can use.
POOL_MAX_FILES = 64
POOL_MAX_BYTES = 4 << 30


def validate_object_id(object_id):
    """Return ``object_id`` if it is safe as a file name, else raise ValueError.

    Ids come off the network, and an id such as ``../x`` must not name a file
    outside the store. No id starts with ".", so none names the pool directory.
    """
    if not isinstance(object_id, str) or not _ID.fullmatch(object_id):
        raise ValueError(f"invalid object id {object_id!r}: expected 1 to 128 characters of [0-9A-Za-z_-]")
    return object_id


def parse_size(text):
    """Bytes in a size such as ``"500000"``, ``"100MB"``, ``"2GiB"`` or ``"1.5G"``.

    Units are case-insensitive: KB, MB, GB, TB are powers of 1000; KiB, MiB,
    GiB, TiB and the bare K, M, G, T are powers of 1024; B or no unit is bytes.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"invalid size {text!r}: must not be negative")
        return text
    match = _SIZE.fullmatch(text) if isinstance(text, str) else None
    unit = match and _UNITS.get(match.group(2).lower())
    if unit is None:
        raise ValueError(f"invalid size {text!r}: expected a number of bytes with an optional unit "
                         f"(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, K, M, G, T), e.g. '100MB' or '1.5GiB'")
    number = match.group(1)
    # Whole numbers stay exact; float would round sizes beyond 2**53.
    return int(number) * unit if number.isdigit() else int(float(number) * unit)


def default_memory_limit():
    """30% of physical memory, or ``$ORION_OBJECT_STORE_MEMORY`` (a size, see ``parse_size``)."""
    override = os.environ.get(MEMORY_ENV)
    if override:
        try:
            return parse_size(override)
        except ValueError as exc:
            raise ValueError(f"${MEMORY_ENV}: {exc}") from None
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.3)


def default_shm_root():
    """/dev/shm where it exists and is writable (memory-backed), else the temp directory."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def _sanitize(node_id):
    return re.sub(r"[^0-9A-Za-z_-]", "_", str(node_id))[:64] or "_"


def locate_object(shm_dir, spill_dir, object_id):
    """The path of ``object_id`` in shared memory if there, else on disk if there, else None.

    In this order a lookup never misses an object that is being spilled. The
    file may still move between this call and opening it: ``open_object``
    handles that.
    """
    validate_object_id(object_id)
    for directory in (shm_dir, spill_dir):
        path = os.path.join(directory, object_id)
        if os.path.exists(path):
            return path
    return None


def open_object(shm_dir, spill_dir, object_id):
    """``(header, buffers)`` of ``object_id`` from the two directories; KeyError if in neither."""
    validate_object_id(object_id)
    for directory in (shm_dir, spill_dir):
        try:
            return read_object(os.path.join(directory, object_id), reuse_mappings=directory == shm_dir)
        except FileNotFoundError:
            continue  # not there, or spilled since: spilling creates the disk copy first
    raise KeyError(object_id)


def remove_dirs(owner_pid, *paths):
    """Remove these directories if this process is ``owner_pid``: for a
    ``weakref.finalize`` (at close, or at the latest at interpreter exit)."""
    # A child forked from the owner inherits the finalizer; the directories are not its to remove.
    if os.getpid() == owner_pid:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


def _pid_is_dead(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False  # alive under another user, or not a pid we can judge: leave it alone
    return False


class NodeStore:
    """One node's store of large objects (see module docstring)."""

    def __init__(self, node_id, memory_limit=None, shm_root=None, spill_dir=None):
        name = _sanitize(node_id)
        pid = os.getpid()
        self.memory_limit = default_memory_limit() if memory_limit is None else parse_size(memory_limit)
        self.shm_dir = os.path.join(shm_root or default_shm_root(), f"orion-{name}-{pid}")
        self.spill_dir = spill_dir or os.path.join(tempfile.gettempdir(), f"orion-spill-{name}-{pid}")
        os.makedirs(self.shm_dir, mode=0o700, exist_ok=True)
        self.pool_dir = recycle_dir(self.shm_dir)  # made by the first free that recycles a file
        self.pool_limit = min(self.memory_limit // 4, POOL_MAX_BYTES)
        self._lock = threading.Lock()
        self._shm = collections.OrderedDict()  # object id -> size; least recently used first
        self._spilled = {}                     # object id -> size
        self._used = 0
        self._spilled_bytes = 0
        self._closed = False
        # Removes the directories if the owner forgets close(), at the latest at interpreter exit.
        self._finalizer = weakref.finalize(self, remove_dirs, pid, self.shm_dir, self.spill_dir)

    def _shm_path(self, object_id):
        return os.path.join(self.shm_dir, object_id)

    def _spill_path(self, object_id):
        return os.path.join(self.spill_dir, object_id)

    def _check_open(self):
        if self._closed:
            raise RuntimeError(f"NodeStore {self.shm_dir} is closed")

    # ------------------------------------------------------------- writing
    def path_for_new(self, object_id, size):
        """Where a writer (maybe another process) writes a new object of ``size`` bytes.

        Objects larger than the whole memory limit go straight to disk.
        """
        validate_object_id(object_id)
        self._check_open()
        if size > self.memory_limit:
            os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
            return self._spill_path(object_id)
        return self._shm_path(object_id)

    def write(self, object_id, header, buffers):
        """Store a value (``serialization.dumps`` output); return its size in bytes.

        Ids name immutable values, so writing an id the store holds is a no-op.
        """
        validate_object_id(object_id)
        with self._lock:
            size = self._shm.get(object_id, self._spilled.get(object_id))
        if size is not None:
            return size
        path = self.path_for_new(object_id, object_size(header, buffers))
        # Pool files are in shared memory: recycling one for a spill file would be a copy across file systems.
        recycle = self.pool_dir if path == self._shm_path(object_id) else None
        size = write_object(path, header, buffers, recycle_dir=recycle)
        self.sealed(object_id, size, path)
        return size

    def sealed(self, object_id, size, path=None):
        """A writer finished writing ``object_id`` (``size`` bytes, at ``path``): account it.

        Then, while shared memory (pool included) is over the limit, drop pool
        files, oldest first, and then spill least recently used objects.
        Sealing an id twice counts it once. Spilling copies files while holding
        the lock, for simplicity: calls on this store wait for it, readers in
        other processes do not.
        """
        validate_object_id(object_id)
        with self._lock:
            self._check_open()
            if object_id in self._shm:
                self._shm.move_to_end(object_id)
                return
            if object_id in self._spilled:
                return
            if path is None:
                in_spill = not os.path.exists(self._shm_path(object_id))
                if in_spill and not os.path.exists(self._spill_path(object_id)):
                    raise FileNotFoundError(f"sealed object {object_id} has no file in {self.shm_dir} "
                                            f"or {self.spill_dir}")
            elif os.path.abspath(path) in (os.path.abspath(self._shm_path(object_id)),
                                           os.path.abspath(self._spill_path(object_id))):
                in_spill = os.path.abspath(path) == os.path.abspath(self._spill_path(object_id))
            else:
                raise ValueError(f"sealed object {object_id} at {path!r}, which is not its path in this store")
            if in_spill:
                self._spilled[object_id] = size
                self._spilled_bytes += size
                return
            self._shm[object_id] = size
            self._used += size
            self._spill_over_limit(keep=object_id)

    def _spill_over_limit(self, keep):
        """Drop pool files, then spill LRU objects, ``keep`` last, until shm usage
        (pool included) is within the limit (lock held)."""
        if self._used + self.pool_limit <= self.memory_limit:
            return  # the common case: within the limit whatever the pool holds, no listing needed
        # Pool files are spare memory: they go first, oldest first.
        pool = pool_files(self.pool_dir)
        pooled = sum(f.size for f in pool)
        for spare in pool:
            if self._used + pooled <= self.memory_limit:
                break
            try:
                os.unlink(spare.path)
            except FileNotFoundError:
                pass  # a writer claimed it: its new object is accounted when sealed
            pooled -= spare.size
        if self._used <= self.memory_limit:
            return  # no list of every object to build
        # The object just sealed goes last: only if it alone is over the limit.
        for object_id in [oid for oid in self._shm if oid != keep] + [keep]:
            if self._used <= self.memory_limit:
                return
            self._spill(object_id)

    def _spill(self, object_id):
        """Move one object from shared memory to disk (lock held)."""
        source, target = self._shm_path(object_id), self._spill_path(object_id)
        os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
        tmp = temp_path(target)
        try:
            shutil.copyfile(source, tmp)  # sendfile on Linux: no trip through Python
            os.rename(tmp, target)
        except FileNotFoundError:
            # The file is gone (freed by another process): nothing to move.
            self._forget_tmp(tmp)
            self._used -= self._shm.pop(object_id)
            return
        except BaseException:
            self._forget_tmp(tmp)
            raise
        # Only now that the disk copy exists may the memory copy go (see module docstring).
        os.unlink(source)
        size = self._shm.pop(object_id)
        self._used -= size
        self._spilled[object_id] = size
        self._spilled_bytes += size

    @staticmethod
    def _forget_tmp(tmp):
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------- reading
    def open(self, object_id):
        """``(header, buffers)`` of ``object_id``, mapped read-only; KeyError if not stored."""
        validate_object_id(object_id)
        with self._lock:
            self._check_open()
            if object_id in self._shm:
                self._shm.move_to_end(object_id)
        # Mapping needs no lock: files are complete once named, and spilling keeps one copy findable.
        return open_object(self.shm_dir, self.spill_dir, object_id)

    def __contains__(self, object_id):
        validate_object_id(object_id)
        with self._lock:
            if object_id in self._shm or object_id in self._spilled:
                return True
        # Written by another process and not sealed yet: the file is complete all the same.
        return locate_object(self.shm_dir, self.spill_dir, object_id) is not None

    @staticmethod
    def locate(shm_dir, spill_dir, object_id):
        """For a reader in another process: the object's path in shm, else on disk, else None."""
        return locate_object(shm_dir, spill_dir, object_id)

    # ------------------------------------------------------------ releasing
    def free(self, object_ids):
        """Delete objects (unknown ids are ignored); readers that mapped them keep their mapping.

        The file of a large object in shared memory goes to the pool, while it has room.
        """
        if isinstance(object_ids, str):
            object_ids = [object_ids]
        for object_id in object_ids:
            validate_object_id(object_id)
        with self._lock:
            if self._closed:
                return
            pool = None  # [files, bytes]; listed on the first object worth recycling
            for object_id in object_ids:
                size = self._shm_size(object_id)  # (sealed or not yet: see _unsealed_size)
                self._used -= self._shm.pop(object_id, 0)
                self._spilled_bytes -= self._spilled.pop(object_id, 0)
                recycled = False
                if size is not None and size >= RECYCLE_MIN:
                    if pool is None:
                        listing = pool_files(self.pool_dir)
                        pool = [len(listing), sum(f.size for f in listing)]
                    recycled = self._recycle(object_id, size, pool)
                # Unlink under the lock, so that a concurrent spill cannot recreate the disk copy.
                paths = [self._spill_path(object_id)]
                if not recycled:
                    paths.append(self._shm_path(object_id))
                for path in paths:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass

    def _unsealed_size(self, object_id):
        """The size of an object's shared-memory file written but not sealed
        yet, or None. Seals are batched and travel apart from the task's
        result, so the head may free an object first: its file is complete,
        and as worth recycling as any (the late seal then finds no file,
        which the agent ignores)."""
        try:
            return os.stat(self._shm_path(validate_object_id(object_id))).st_size
        except (FileNotFoundError, ValueError):  # (ValueError: not an id at all)
            return None

    def _recycle(self, object_id, size, pool):
        """Move a freed object's shm file into the pool if it has room; whether it did (lock held)."""
        if pool[0] >= POOL_MAX_FILES or pool[1] + size > self.pool_limit:
            return False
        os.makedirs(self.pool_dir, mode=0o700, exist_ok=True)
        try:
            # A reader that still maps the file keeps its pin: no writer reuses it until it lets go.
            os.rename(self._shm_path(object_id), os.path.join(self.pool_dir, pool_name(size)))
        except FileNotFoundError:
            return False  # gone already (freed by another process): nothing to keep
        pool[0] += 1
        pool[1] += size
        return True

    def recyclable(self, object_ids):
        """Those of ``object_ids`` in shared memory whose file ``free`` would recycle."""
        with self._lock:
            return [object_id for object_id in object_ids if (self._shm_size(object_id) or 0) >= RECYCLE_MIN]

    def _shm_size(self, object_id):
        """Bytes of the object's shared-memory file, sealed or not yet (lock held); None if none."""
        size = self._shm.get(object_id)
        if size is None and object_id not in self._spilled:
            size = self._unsealed_size(object_id)
        return size

    def stats(self):
        """Bytes and counts: live in memory (``used``, ``objects``), spilled to disk, and
        recycled (freed files kept in the pool for writers to reuse: memory, not objects)."""
        with self._lock:
            pool = pool_files(self.pool_dir)
            return {"used": self._used, "spilled": self._spilled_bytes, "limit": self.memory_limit,
                    "objects": len(self._shm), "spilled_objects": len(self._spilled),
                    "recycled": sum(f.size for f in pool), "recycled_files": len(pool)}

    def close(self):
        """Remove both directories and every object in them; idempotent."""
        with self._lock:
            self._closed = True
            self._shm.clear()
            self._spilled.clear()
            self._used = self._spilled_bytes = 0
        self._finalizer()

    @staticmethod
    def cleanup_stale(shm_root=None, spill_root=None):
        """Remove store directories whose owning process is dead; return their paths.

        Looks for ``orion-*-<pid>`` (which covers ``orion-spill-*-<pid>``) in
        both roots and removes only directories whose pid no longer exists; a
        directory of a live process, or of another user's, is never touched.
        """
        removed = []
        roots = dict.fromkeys((shm_root or default_shm_root(), spill_root or tempfile.gettempdir()))
        for root in roots:
            try:
                entries = list(os.scandir(root))
            except FileNotFoundError:
                continue
            for entry in entries:
                match = _STORE_DIR.fullmatch(entry.name)
                if not match or not entry.is_dir(follow_symlinks=False):
                    continue
                pid = int(match.group(1))
                if pid <= 0 or pid == os.getpid() or not _pid_is_dead(pid):
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                if not os.path.lexists(entry.path):
                    removed.append(entry.path)
        return removed
