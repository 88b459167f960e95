"""How one process reads and writes large objects.

A process that belongs to a node (a worker process, or the driver of an
embedded cluster, which runs the node's agent) maps an object held by its
own node straight from the node's shared-memory or spill directory: no
socket, no copy. An object held elsewhere is fetched from a holder's object
server (``transfer.fetch``); a worker then keeps the copy in its node's store
(so the next task on this node maps it) and reports it, so the head's
directory lists this node as a holder too. A worker fetches a large value
(``STREAM_MIN`` bytes and more) in parts straight into its node's store
(``transfer.fetch_into``) and maps it from there: the kept copy is the value.
"""
from __future__ import annotations

import logging
import os

from . import shm_format, transfer
from .node_store import open_object, validate_object_id

log = logging.getLogger("orion.store")

# A value whose pickle (header plus buffers) is at most this many bytes travels
# inline in messages; a larger one stays in its node's store (Ray: 100 KiB).
INLINE_MAX = int(os.environ.get("ORION_INLINE_MAX", 100 * 1024))
# Values fetched from another node into this node's store are streamed in parts
# straight into it from this size up (see transfer.fetch_into); smaller ones
# come in one message.
STREAM_MIN = 1 << 20


def serialized_size(header, buffers):
    return len(header) + sum(memoryview(b).nbytes for b in buffers)


class ObjectUnavailable(Exception):
    """No holder could hand the object over; ``failed`` names the holders tried."""

    def __init__(self, object_id, failed, reasons):
        self.object_id = object_id
        self.failed = failed
        super().__init__(f"object {object_id} could not be fetched from any holder: " + "; ".join(reasons))


class LocalNode:
    """The directories of the node this process belongs to, and how to tell it
    about objects written into them (``seal(object_id, size)``)."""

    def __init__(self, node_id, shm_dir, spill_dir, limit, seal):
        self.node_id = node_id
        self.shm_dir = shm_dir
        self.spill_dir = spill_dir
        self.pool_dir = shm_format.recycle_dir(shm_dir)  # where the node keeps freed files to reuse
        self.limit = limit
        self.seal = seal
        self._made = set()  # directories known to exist

    def open(self, object_id):
        """``(header, buffers)`` mapped from the node's store, or None."""
        try:
            return open_object(self.shm_dir, self.spill_dir, object_id)
        except (KeyError, FileNotFoundError):  # never here, or freed meanwhile
            return None
        except ValueError:  # an id that cannot name a file, or a corrupt file: not usable here
            return None

    def write(self, object_id, header, buffers, seal=True):
        """Write a value into the node's store (straight to disk when it alone
        is over the memory limit); returns its size. ``seal=False``: the
        caller tells the node itself (``seal`` may be for one thread only)."""
        path, recycle_dir = self._place(object_id, shm_format.object_size(header, buffers))
        size = shm_format.write_object(path, header, buffers, recycle_dir=recycle_dir)
        if seal:
            self.seal(object_id, size)
        return size

    def writer(self, object_id, header, lengths):
        """A ``shm_format.ObjectWriter`` for a value whose buffers have these
        lengths, in the node's store; the caller seals it after ``commit``."""
        path, recycle_dir = self._place(object_id, shm_format.layout_size(len(header), lengths))
        return shm_format.ObjectWriter(path, header, lengths, recycle_dir=recycle_dir)

    def _place(self, object_id, size):
        """Where an object of ``size`` bytes goes: ``(path, pool directory or
        None)``; on disk when it alone is over the memory limit."""
        validate_object_id(object_id)
        in_memory = size <= self.limit
        directory = self.shm_dir if in_memory else self.spill_dir
        if directory not in self._made:
            os.makedirs(directory, exist_ok=True)
            self._made.add(directory)
        # Recycling a freed file saves zeroing fresh pages; pool files are in shared memory only.
        return os.path.join(directory, object_id), (self.pool_dir if in_memory else None)

    @classmethod
    def from_environment(cls, node_id, seal):
        """The node's store as its agent describes it to its worker processes."""
        shm_dir = os.environ.get("ORION_STORE_SHM_DIR")
        if not shm_dir:
            return None
        return cls(node_id, shm_dir, os.environ["ORION_STORE_SPILL_DIR"],
                   int(os.environ["ORION_STORE_LIMIT"]), seal)


class ObjectAccess:
    """Reads ``Remote`` entries for one process. ``keep_copies``: write what
    was fetched into the local node's store (worker processes do)."""

    def __init__(self, context, keys=None, local=None, keep_copies=False):
        self.context = context
        self.keys = keys
        self.local = local
        self.keep_copies = keep_copies and local is not None

    def read_as_copy(self, remote):
        """Whether ``read`` gives a private copy read from this node's store
        (a value of at most ``shm_format.COPY_MAX`` bytes), not a mapping or
        fetched frames. A client does not keep such a copy for later gets: it
        would hold a second copy of the value in memory as long as the ref
        lives (1,000 gathered 100 KB values: 100 MB more, and a page fault per
        4 KiB of it), while reading it again costs ~15 µs."""
        local = self.local
        return (local is not None and remote.size <= shm_format.COPY_MAX
                and any(holder.node_id == local.node_id for holder in remote.holders))

    def read(self, object_id, remote):
        """``(header, buffers, keep)``. ``keep`` is None, or (with
        ``keep_copies``, for a value fetched from another node) a callable that
        writes the copy into the local node's store: run it, then report the
        copy. It may run in another thread while the task uses the buffers; it
        returns the size and leaves the ``seal`` to the caller.
        Raises ``ObjectUnavailable``."""
        local = self.local
        holders = remote.holders
        failed, reasons = [], []
        if local is not None:
            for holder in holders:
                if holder.node_id == local.node_id:
                    value = local.open(object_id)
                    if value is not None:
                        return value[0], value[1], None
                    failed.append(holder.node_id)
                    reasons.append(f"node {holder.node_id} (this node) no longer has it")
        for holder in holders:
            if local is not None and holder.node_id == local.node_id:
                continue
            try:
                if self.keep_copies and remote.size >= STREAM_MIN:
                    value = self._fetch_into_store(object_id, holder, remote.size)
                    if value is not None:
                        return value
                header, buffers = transfer.fetch(self.context, holder.address, object_id, remote.size, self.keys)
            except transfer.FetchError as exc:
                failed.append(holder.node_id)
                reasons.append(str(exc))
                continue
            if self.keep_copies:
                return header, buffers, lambda: local.write(object_id, header, buffers, seal=False)
            return header, buffers, None
        raise ObjectUnavailable(object_id, failed, reasons or ["no holders"])

    def _fetch_into_store(self, object_id, holder, size):
        """Fetch a large value in parts straight into the local node's store
        and map it from there: ``(header, buffers, keep)`` with a ``keep``
        that has nothing left to write. None when the store cannot take it
        (no room): then it is fetched into memory instead."""
        local = self.local
        try:
            written = transfer.fetch_into(self.context, holder.address, object_id,
                                          lambda header, lengths: local.writer(object_id, header, lengths),
                                          size, self.keys)
        except OSError as exc:
            log.warning("could not keep a copy of object %s in this node's store: %s", object_id, exc)
            return None
        value = local.open(object_id)
        if value is None:  # (nobody knows of it until we report it: only a bug could remove it)
            raise transfer.FetchError(f"object {object_id} was fetched but cannot be read back")
        return value[0], value[1], lambda: written
