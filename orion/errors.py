"""Orion's exception classes, and turning a scheduler ``Failure`` into one.

``TaskError`` is special: the error raised by ``get`` for a task whose function
raised is an instance of ``TaskError`` *and* of the original exception's class,
so ``except ValueError`` keeps working across the cluster.
"""
from __future__ import annotations


class OrionError(Exception):
    """Base class of every Orion error."""


class TaskError(OrionError):
    """The task's function raised. ``.cause`` holds the original exception and
    the message holds the remote traceback."""

    cause: BaseException | None = None
    traceback_text: str = ""

    def __init__(self, message="", cause=None, traceback_text=""):
        super().__init__(message)
        self.cause = cause
        self.traceback_text = traceback_text

    def __str__(self):
        return self.args[0] if self.args else ""

    def __reduce__(self):
        cause = portable(self.cause) if self.cause is not None else None
        return _rebuild_task_error, (cause, self.traceback_text, self.args[0] if self.args else "")

    @staticmethod
    def from_cause(cause, traceback_text, task_name=""):
        """Build the error ``get`` raises: a TaskError that also is-a ``type(cause)``."""
        where = f" in task {task_name}" if task_name else ""
        message = (f"{type(cause).__name__}: {cause}{where}\n\n"
                   f"Remote traceback:\n{traceback_text.rstrip()}")
        cls = _dual_class(type(cause))
        if cls is TaskError:
            return TaskError(message, cause, traceback_text)
        try:
            err = cls.__new__(cls)
            # Fill in both bases without running the cause class's __init__, whose
            # signature we do not know.
            err.args = (message,)
            err.cause = cause
            err.traceback_text = traceback_text
            for name, value in getattr(cause, "__dict__", {}).items():
                err.__dict__.setdefault(name, value)
        except Exception:  # e.g. a __new__ that demands arguments: a plain TaskError
            return TaskError(message, cause, traceback_text)
        return err


_DUAL_CLASSES = {}


def _dual_class(cause_class):
    """``TaskError`` mixed with ``cause_class`` (cached), or TaskError itself
    when the cause's class cannot be subclassed that way."""
    if issubclass(cause_class, TaskError):
        return cause_class
    cls = _DUAL_CLASSES.get(cause_class)
    if cls is None:
        try:
            cls = type(f"TaskError({cause_class.__name__})", (TaskError, cause_class),
                       {"__str__": TaskError.__str__, "__reduce__": TaskError.__reduce__,
                        "__module__": __name__})
        except Exception:  # final class, a layout conflict (some C types), a refusing __init_subclass__
            cls = TaskError
        _DUAL_CLASSES[cause_class] = cls
    return cls


def _rebuild_task_error(cause, traceback_text, message):
    cause = unwrap(cause)
    if cause is None:
        return TaskError(message, None, traceback_text)
    err = TaskError.from_cause(cause, traceback_text)
    err.args = (message,)
    return err


class PortableException:
    """Carries an exception that pickle cannot rebuild from its ``args`` (say,
    its ``__init__`` takes other parameters): it travels as its class, args and
    ``__dict__``, and is rebuilt without calling ``__init__``."""

    __slots__ = ("exc",)

    def __init__(self, exc):
        self.exc = exc

    def __reduce__(self):
        exc = self.exc
        return _rebuild_exception, (type(exc), exc.args, dict(getattr(exc, "__dict__", None) or {}))


def _rebuild_exception(cls, args, state):
    try:
        exc = cls.__new__(cls, *args)
    except Exception:
        exc = BaseException.__new__(cls)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


def portable(exc):
    """``exc`` when pickling round-trips it, else a ``PortableException`` around it."""
    import pickle

    import cloudpickle

    try:
        pickle.loads(cloudpickle.dumps(exc))
    except Exception:
        return PortableException(exc)
    return exc


def unwrap(cause):
    return cause.exc if type(cause) is PortableException else cause


class GetTimeoutError(OrionError, TimeoutError):
    """``get`` (or a future's result) timed out."""


class TaskCancelledError(OrionError):
    """The task, or one it depends on, was cancelled."""


class WorkerCrashedError(OrionError):
    """The worker running the task died and ``max_retries`` was used up."""


class ObjectLostError(OrionError):
    """The object cannot be found or rebuilt."""


class UnschedulableError(OrionError):
    """The task demands resources that no node of the cluster offers."""


_BY_KIND = {
    "worker_crashed": WorkerCrashedError,
    "cancelled": TaskCancelledError,
    "object_lost": ObjectLostError,
    "unschedulable": UnschedulableError,
}


def failure_to_error(failure, decode_payload=None):
    """The exception that ``get`` raises for a scheduler ``Failure``.

    For ``task_error`` the payload is ``(cause, traceback_text, task_name)``,
    or bytes that ``decode_payload`` turns into that tuple.
    """
    if failure.kind == "task_error":
        payload = failure.payload
        if decode_payload is not None and isinstance(payload, (bytes, bytearray, memoryview)):
            try:
                payload = decode_payload(payload)
            except Exception as exc:  # the cause's class may not exist here
                return TaskError(f"{failure.message}\n(the original exception could not be "
                                 f"unpickled here: {exc!r})")
        if payload is None:
            return TaskError(failure.message)
        cause, traceback_text, task_name = payload
        cause = unwrap(cause)
        if cause is None:
            return TaskError(failure.message, None, traceback_text)
        return TaskError.from_cause(cause, traceback_text, task_name)
    return _BY_KIND.get(failure.kind, OrionError)(failure.message)
