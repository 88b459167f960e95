"""The file format of one large object in a node's store.

A value is what ``orion.serialization.dumps`` returns: a pickle header plus
the protocol-5 out-of-band buffers. One object is one file::

    offset 0   fixed header   b"ORO1", buffer count (u32), pickle header
                              length (u64), file size (u64); little endian
    offset 28  buffer table   (offset u64, length u64) per buffer
    then       pickle header  the pickle stream, as is
    then       buffers        each at an offset that is a multiple of 64

Buffers start 64-byte aligned in the file, and a mapping starts on a page
boundary, so numpy arrays read back are aligned in memory too. The file size
in the header catches a truncated file.

Writers write a temporary file in the same directory and rename it into
place, so a reader that finds ``path`` always finds a complete object, and
nobody ever modifies a file while somebody has it mapped (recycled files
included, see below). Readers map the
file read-only and hand out memoryview slices of the mapping: a 100 MB array
is never copied, and the mapping lives as long as any slice (or any array made
from one) does, even after the file is unlinked.

Recycling. Writing into a fresh tmpfs file makes the kernel allocate and zero
every page; overwriting the pages of an existing file skips that (100 MiB:
~33 ms fresh, ~18 ms recycled). So the node moves the file of a freed large
object into a pool, the directory ``RECYCLE_DIR`` inside its shared-memory
directory, instead of unlinking it, and a writer of a similar size claims a
pool file (rename is the claim), overwrites it and renames it into place as
its new object. Pool file names carry the size (``<size>-<pid>-<counter>``),
so choosing one needs no stat.

A freed object may still be mapped: an array made from it can outlive its
ObjectRef. Readers therefore pin what they map: ``read_object`` holds a shared
``flock`` on the file for as long as the mapping lives, and a writer reuses a
pool file only if it gets the exclusive lock (non-blocking); otherwise it
unlinks the file (its pages go when the reader lets go) and tries another or
a fresh file. A reader that opened an object just as it was freed and its
file claimed finds the writer's exclusive lock, or, once the writer is done,
that ``path`` no longer names the file it opened: either way the object is
gone (FileNotFoundError), as if the reader had come a moment later.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import itertools
import mmap
import os
import pickle
import re
import struct

from ..serialization import BYTES_HEADER
from . import mappings

MAGIC = b"ORO1"
ALIGNMENT = 64

_FIXED = struct.Struct("<4sIQQ")  # magic, buffer count, pickle header length, file size
_ENTRY = struct.Struct("<QQ")     # buffer offset, buffer length

# Temporary names must be unique among the threads and processes that write into
# one directory: pid for the process, a counter for the thread.
_temp_counter = itertools.count()


def temp_path(path):
    """A fresh temporary name next to ``path`` (same directory, so rename is atomic)."""
    return f"{path}.tmp-{os.getpid()}-{next(_temp_counter)}"


# The pool of recycled files: a hidden subdirectory of the shared-memory
# directory (object ids never start with "."), so no object lookup finds it.
RECYCLE_DIR = ".free"
# Smaller files are not worth it: zeroing their pages costs little, and every
# pool file is memory nobody uses.
RECYCLE_MIN = 1 << 20

_POOL_NAME = re.compile(r"([0-9]+)-([0-9]+)-([0-9]+)")
_pool_counter = itertools.count()

PoolFile = collections.namedtuple("PoolFile", "size order path")


def recycle_dir(shm_dir):
    """The pool directory of the shared-memory directory ``shm_dir``."""
    return os.path.join(shm_dir, RECYCLE_DIR)


def pool_name(size):
    """A fresh name for a pool file of ``size`` bytes; the counter orders the pool oldest first."""
    return f"{size}-{os.getpid()}-{next(_pool_counter)}"


def pool_files(directory):
    """The files in the pool ``directory``, oldest first, from their names alone (no stat).

    A listing is a snapshot: other processes may claim any of these files at any time.
    """
    try:
        with os.scandir(directory) as entries:
            names = [entry.name for entry in entries]
    except FileNotFoundError:
        return []  # the node creates the pool when it first recycles a file
    files = []
    for name in names:
        match = _POOL_NAME.fullmatch(name)
        if match:  # anything else is not a pool file: leave it alone
            files.append(PoolFile(int(match.group(1)), int(match.group(3)), os.path.join(directory, name)))
    files.sort(key=lambda f: f.order)
    return files


def _flat(buffer):
    """A 1-D unsigned-byte view of any C- or Fortran-contiguous bytes-like object."""
    return pickle.PickleBuffer(buffer).raw()


def _align(position):
    return -(-position // ALIGNMENT) * ALIGNMENT


def _layout(header_len, lengths):
    """(file size, buffer offsets) for a pickle header and buffers of these lengths."""
    position = _FIXED.size + _ENTRY.size * len(lengths) + header_len
    offsets = []
    for length in lengths:
        position = _align(position)
        offsets.append(position)
        position += length
    return position, offsets


def layout_size(header_len, lengths):
    """The size of the file of an object with this pickle header length and buffer lengths."""
    return _layout(header_len, lengths)[0]


def object_size(header, buffers):
    """The size of the file that ``write_object(path, header, buffers)`` writes."""
    return _layout(len(_flat(header)), [_flat(b).nbytes for b in buffers])[0]


def write_object(path, header, buffers, recycle_dir=None):
    """Write one value to ``path`` atomically; return the file size.

    ``recycle_dir``: a pool directory on the same file system as ``path``
    (see module docstring). A value of at least ``RECYCLE_MIN`` bytes is
    written into a claimed pool file when one fits, else into a fresh file.
    """
    views = [_flat(b) for b in buffers]
    writer = ObjectWriter(path, header, [view.nbytes for view in views], recycle_dir)
    try:
        for index, view in enumerate(views):
            writer.write(index, 0, view)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


class ObjectWriter:
    """One object being written whose buffers may come piece by piece (a
    fetch streams them in from another node): the file is laid out for a
    pickle header and buffers of known lengths, ``write`` puts bytes at a
    position inside one buffer, ``commit`` renames the complete file into
    place (returns its size), ``abort`` removes it.

    Each byte is copied once: into a fresh file with ``pwrite`` (about twice
    as fast on tmpfs as faulting in the pages of a writable mapping one by
    one), into a recycled one through a writable mapping (its pages are
    there: nothing to zero).
    """

    def __init__(self, path, header, lengths, recycle_dir=None):
        header = _flat(header)
        self.path = path
        self.size, self.offsets = _layout(len(header), lengths)
        self.lengths = lengths
        self.tmp = temp_path(path)
        self.fd = None
        self.recycled = False
        self._target = None
        try:
            if recycle_dir is not None and self.size >= RECYCLE_MIN:
                mappings.release_idle()  # this process's own pins on files nothing uses any more go first
                self.fd = _claim_pool_file(recycle_dir, self.size, self.tmp)
            self.recycled = self.fd is not None
            if self.fd is None:
                self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            # A recycled file is at most twice the size: shrinking frees its tail.
            os.ftruncate(self.fd, self.size)
            # Through a writable mapping only into a recycled file (~5 ms for 100
            # MiB with the mapping this process kept from an earlier write, ~12 ms
            # with a new one, against ~15 ms with pwrite).
            self._target = mappings.WRITERS.mapping(self.fd, self.size) if self.recycled else None
            for offset, data in _frame(self.size, header, lengths, self.offsets):
                self._put(offset, data)
        except BaseException:
            self.abort()
            raise

    def write(self, index, position, data):
        """Copy ``data`` (a flat bytes-like) into buffer ``index`` at ``position``."""
        view = memoryview(data)
        if position < 0 or position + view.nbytes > self.lengths[index]:
            raise ValueError(f"{view.nbytes} bytes at {position} do not fit buffer {index} "
                             f"of {self.lengths[index]} bytes")
        self._put(self.offsets[index] + position, view)

    def _put(self, offset, data):
        if self._target is not None:
            self._target[offset:offset + memoryview(data).nbytes] = data
        else:
            _write_all(self.fd, data, offset)

    def commit(self):
        try:
            self._close()
            os.rename(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.size

    def abort(self):
        # The temporary name is ours alone: whatever is there (fresh or claimed) is garbage now.
        self._close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

    def _close(self):
        fd, self.fd = self.fd, None
        if fd is None:
            return
        if self.recycled:
            # Unlock explicitly: a writable mapping's duplicate of the descriptor
            # shares the locked open file description and outlives ``fd``.
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _claim_pool_file(directory, size, tmp):
    """Claim a pool file of ``size`` to ``2 * size`` bytes as ``tmp``: its descriptor, locked
    exclusively, or None when no pool file fits."""
    for candidate in sorted((f for f in pool_files(directory) if size <= f.size <= 2 * size),
                            key=lambda f: f.size):
        try:
            # Rename is atomic: of writers racing for one file, exactly one gets it.
            os.rename(candidate.path, tmp)
        except FileNotFoundError:
            continue  # another writer took it (or the node dropped it)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return None  # the pool is on another file system than path: cannot recycle
            raise
        fd = os.open(tmp, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            # A reader still maps the freed object (BlockingIOError), or the file
            # system cannot lock: never write into it. Unlinking releases its
            # pages once the reader lets go.
            os.close(fd)
            os.unlink(tmp)
            continue
        except BaseException:
            os.close(fd)
            raise
        return fd
    return None


def _frame(size, header, lengths, offsets):
    """``(offset, bytes)`` of everything the file holds besides its buffers:
    fixed header and buffer table with the pickle header, then zeros in the
    alignment gaps (where a recycled file still holds a previous object's
    bytes)."""
    start = _FIXED.size + _ENTRY.size * len(lengths)
    head = bytearray(start)
    _FIXED.pack_into(head, 0, MAGIC, len(lengths), len(header), size)
    for i, (offset, length) in enumerate(zip(offsets, lengths)):
        _ENTRY.pack_into(head, _FIXED.size + i * _ENTRY.size, offset, length)
    yield 0, head + header
    position = start + len(header)
    for offset, length in zip(offsets, lengths):
        if offset > position:
            yield position, bytes(offset - position)
        position = offset + length


def _write_all(fd, data, offset):
    view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:written + _CHUNK], offset + written)


_CHUNK = 1 << 30  # pwrite moves at most ~2 GiB per call on Linux


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# Objects up to this size are read with one copy instead of mapped: below it
# the copy costs less than mapping and unmapping (measured here: a 100 KiB
# value 53 µs copied against ~85 µs mapped, read and unmapped; at 256 KiB the
# copy is the slower, as its buffer no longer comes from the heap).
COPY_MAX = 128 * 1024


def read_object(path, reuse_mappings=False):
    """``(header, buffers)``: read-only memoryviews of the object at ``path``.

    The buffers are read-only views of a shared mapping of the file (no
    copy), or, for an object of at most ``COPY_MAX`` bytes, of a private copy.
    Raises FileNotFoundError if there is no file (or it was freed meanwhile),
    ValueError if it is corrupt. ``reuse_mappings``: the file is in shared
    memory, where large files are recycled: map it through ``mappings.CACHE``.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < _FIXED.size:  # also keeps mmap away from an empty file
            raise ValueError(f"corrupt object file {path}: {size} bytes, shorter than its header")
        if size <= COPY_MAX:
            # Small: a copy is cheaper than a mapping (no mmap and munmap, which
            # also take the process's memory-map lock). No pin: only files of
            # RECYCLE_MIN bytes and more are ever recycled, so this one's
            # contents never change (freeing it only unlinks it).
            value = _read_bytes_value(fd, size)
            if value is not None:
                return value
            data = _aligned_buffer(size)
            if os.preadv(fd, [data], 0) != size:
                raise ValueError(f"corrupt object file {path}: shorter than {size} bytes")
            return _views(path, data.toreadonly(), size)
        stat = _pin(path, fd)
        size = stat.st_size
        if reuse_mappings and size >= RECYCLE_MIN:
            owned, fd = fd, None
            mm = mappings.CACHE.lease(owned, stat)  # takes the descriptor over; holds the pin while leased
            return _views(path, mm, size)
        # MAP_POPULATE maps every page now, in one go, instead of one fault per page later.
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
    finally:
        # The mapping does not need this descriptor, and neither does the pin:
        # mmap.mmap dup()s the descriptor and keeps the duplicate open until the
        # mmap object is deallocated, and a flock belongs to the open file
        # description, which the duplicate shares. So the shared lock lives
        # exactly as long as the mapping: until the last memoryview slice (and
        # every numpy array made from one) is gone.
        if fd is not None:
            os.close(fd)
    return _views(path, mm, size, close_on_error=True)


# What a file holding one ``bytes`` value out of band starts with.
_BYTES_PEEK = _FIXED.size + _ENTRY.size + len(BYTES_HEADER)


def _read_bytes_value(fd, size):
    """``(header, buffers)`` of a file that holds one ``bytes`` value out of
    band (``serialization.BYTES_HEADER``), its buffer read straight into the
    ``bytes`` that ``loads`` hands the caller: one copy instead of two, made
    with the GIL released (with its page faults, the larger part of reading a
    value into fresh memory). None for a file that holds anything else."""
    peek = os.pread(fd, _BYTES_PEEK, 0)
    if len(peek) < _BYTES_PEEK:
        return None
    magic, count, header_len, recorded_size = _FIXED.unpack_from(peek, 0)
    offset, length = _ENTRY.unpack_from(peek, _FIXED.size)
    if (magic != MAGIC or count != 1 or header_len != len(BYTES_HEADER) or recorded_size != size
            or peek[_FIXED.size + _ENTRY.size:] != BYTES_HEADER
            or offset != _align(_BYTES_PEEK) or offset + length != size):
        return None  # (anything corrupt is the general path's to report)
    value = os.pread(fd, length, offset)
    if len(value) != length:
        return None
    return BYTES_HEADER, [value]


def _aligned_buffer(size):
    """A writable memoryview of ``size`` bytes that starts on an ``ALIGNMENT``
    boundary, as a mapping does (so buffers in it keep the file's alignment)."""
    data = bytearray(size + ALIGNMENT - 1)
    address = ctypes.addressof(ctypes.c_char.from_buffer(data))
    start = -address % ALIGNMENT
    return memoryview(data)[start:start + size]


def _views(path, mm, size, close_on_error=False):
    view = mm if type(mm) is memoryview else memoryview(mm)
    try:
        header, spans = _parse(path, view, size)
    except BaseException:
        view.release()
        if close_on_error:
            mm.close()  # (a cached mapping stays; its lease ends with this view)
        raise
    # Each slice holds the mapping (and so the pin) alive; nothing else needs to.
    return header, [view[offset:offset + length] for offset, length in spans]


def _pin(path, fd):
    """Take the reader's shared lock on ``fd``, opened from ``path``; its stat.

    Raises FileNotFoundError if the object at ``path`` was freed meanwhile.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        # Only a writer that claimed a pool file holds the exclusive lock: the
        # object was freed after we opened it, and its file is being reused.
        raise FileNotFoundError(errno.ENOENT, "object freed while opening it", path) from None
    # Between open and flock the object may have been freed and its file
    # recycled (and unlocked again, now holding another object): the lock
    # protects the contents only if ``path`` still names the file we opened.
    mine = os.fstat(fd)
    current = os.stat(path)  # FileNotFoundError: freed
    if (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev):
        raise FileNotFoundError(errno.ENOENT, "object freed while opening it", path)
    return mine


def _parse(path, view, size):
    magic, count, header_len, recorded_size = _FIXED.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError(f"corrupt object file {path}: bad magic {bytes(magic)!r}")
    if recorded_size != size:
        raise ValueError(f"corrupt object file {path}: {size} bytes, header says {recorded_size}")
    data_start = _FIXED.size + _ENTRY.size * count + header_len
    if data_start > size:
        raise ValueError(f"corrupt object file {path}: {count} buffers and a {header_len}-byte pickle header "
                         f"do not fit in {size} bytes")
    spans = [_ENTRY.unpack_from(view, _FIXED.size + i * _ENTRY.size) for i in range(count)]
    for offset, length in spans:
        if offset < data_start or offset % ALIGNMENT or offset + length > size:
            raise ValueError(f"corrupt object file {path}: bad buffer span ({offset}, {length})")
    header_start = data_start - header_len
    # A view, not a copy: a value pickled in-band (a 100 KB bytes object) is
    # all header, and pickle.loads reads a memoryview as well as bytes.
    return view[header_start:data_start], spans


# Sending buffers as ZeroMQ frames with copy=False wants exactly these views.
read_bytes_frames = read_object
