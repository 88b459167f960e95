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
nobody ever modifies a file that somebody may have mapped. Readers map the
file read-only and hand out memoryview slices of the mapping: a 100 MB array
is never copied, and the mapping lives as long as any slice (or any array made
from one) does, even after the file is unlinked.
"""
from __future__ import annotations

import itertools
import mmap
import os
import pickle
import struct

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


def object_size(header, buffers):
    """The size of the file that ``write_object(path, header, buffers)`` writes."""
    return _layout(len(_flat(header)), [_flat(b).nbytes for b in buffers])[0]


def write_object(path, header, buffers):
    """Write one value to ``path`` atomically; return the file size.

    Each source buffer is copied once, straight into the file with
    ``pwrite`` (about twice as fast on tmpfs as faulting in the pages of a
    writable mapping one by one).
    """
    header = _flat(header)
    views = [_flat(b) for b in buffers]
    size, offsets = _layout(len(header), [v.nbytes for v in views])
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.ftruncate(fd, size)
            start = _FIXED.size + _ENTRY.size * len(views)
            head = bytearray(start)
            _FIXED.pack_into(head, 0, MAGIC, len(views), len(header), size)
            for i, (offset, view) in enumerate(zip(offsets, views)):
                _ENTRY.pack_into(head, _FIXED.size + i * _ENTRY.size, offset, view.nbytes)
            _write_all(fd, head + header, 0)
            for offset, view in zip(offsets, views):
                _write_all(fd, view, offset)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return size


def _write_all(fd, data, offset):
    view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:written + _CHUNK], offset + written)


_CHUNK = 1 << 30  # pwrite moves at most ~2 GiB per call on Linux


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def read_object(path):
    """``(header, buffers)``: read-only memoryviews of the object at ``path``.

    The buffers are read-only views of a shared mapping of the file (no copy).
    Raises FileNotFoundError if there is no file, ValueError if it is corrupt.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < _FIXED.size:  # also keeps mmap away from an empty file
            raise ValueError(f"corrupt object file {path}: {size} bytes, shorter than its header")
        # MAP_POPULATE maps every page now, in one go, instead of one fault per page later.
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
    finally:
        # The mapping does not need the descriptor.
        os.close(fd)
    view = memoryview(mm)
    try:
        header, spans = _parse(path, view, size)
    except BaseException:
        view.release()
        mm.close()
        raise
    # Each slice holds the mapping alive; nothing else needs to.
    return header, [view[offset:offset + length] for offset, length in spans]


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
