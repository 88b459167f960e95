"""Values on the wire: cloudpickle with pickle protocol 5 out-of-band buffers.

``dumps`` returns a small header (the pickle stream) plus the list of large
buffers (numpy arrays, bytes-like objects) that pickle handed out of band;
those ride as separate ZeroMQ frames and are never joined into one bytes
object. ``loads`` takes the header and the frames back.
"""
from __future__ import annotations

import importlib
import pickle

import cloudpickle

from .object_ref import ObjectRef

# Values of these types pickle by value with the C pickler, which is several
# times faster than cloudpickle's Python-level Pickler set-up.
_PLAIN = frozenset((int, float, str, bytes, bool, type(None), ObjectRef))
_EMPTY_ARGS = pickle.dumps(((), {}), protocol=5)
# A ``bytes`` value at least this large goes out of band as it is, under a
# header that rebuilds it as ``bytes(<its one buffer>)``: pickling it in band
# would copy it into the header first, and ``bytes`` of a ``bytes`` is that
# same object, so a reader that reads the buffer into a ``bytes`` of its own
# gets the value with no copy at all (see ``store.shm_format``).
BYTES_OUT_OF_BAND_MIN = 64 * 1024
BYTES_HEADER = pickle.dumps(bytes, protocol=5)[:-1] + pickle.NEXT_BUFFER + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP


class SerializationError(TypeError):
    """A value could not be pickled; the message says which one."""


def dumps(value, what="value"):
    if type(value) is bytes and len(value) >= BYTES_OUT_OF_BAND_MIN:
        return BYTES_HEADER, [value]
    if type(value) in _PLAIN:
        return pickle.dumps(value, protocol=5), []
    buffers = []
    try:
        header = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise SerializationError(f"{what} cannot be pickled: {type(exc).__name__}: {exc}") from exc
    return header, [b.raw() for b in buffers]


def loads(header, buffers=()):
    return pickle.loads(header, buffers=buffers)


def dumps_args(args, kwargs, task_name):
    """Pickle a task's arguments, naming the argument that cannot be pickled."""
    if not args and not kwargs:
        return _EMPTY_ARGS, []
    plain = _PLAIN
    if all(type(a) in plain for a in args) and (not kwargs or all(type(v) in plain for v in kwargs.values())):
        return pickle.dumps((args, kwargs), protocol=5), []
    try:
        return dumps((args, kwargs))
    except SerializationError:
        for i, value in enumerate(args):
            dumps(value, f"argument {i} of {task_name}")
        for key, value in kwargs.items():
            dumps(value, f"argument {key!r} of {task_name}")
        raise


def dumps_function(function, what="function"):
    """Pickle a task's function for the workers.

    A function defined at the top level of an importable module travels by
    reference (module and name), with its by-value pickle as a fallback.
    cloudpickle alone would send it by value, because ``@orion.remote`` put a
    RemoteFunction under its name; by value, its code would lose its file name,
    and remote tracebacks their source lines.
    """
    by_value = dumps(function, what)[0]
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    if module and module != "__main__" and "<locals>" not in qualname:
        return pickle.dumps(("ref", module, qualname, by_value), protocol=5)
    return pickle.dumps(("value", by_value), protocol=5)


def loads_function(blob):
    """The function that ``dumps_function`` sent (a plain pickle also works)."""
    loaded = pickle.loads(blob)
    if not isinstance(loaded, tuple):
        return loaded
    if loaded[0] == "ref":
        _, module, qualname, by_value = loaded
        try:
            target = importlib.import_module(module)
            for part in qualname.split("."):
                target = getattr(target, part)
            target = getattr(target, "_function", target)  # the RemoteFunction's body
            if callable(target):
                return target
        except Exception:  # not importable here: use the copy that came by value
            pass
        return pickle.loads(by_value)
    return pickle.loads(loaded[1])
