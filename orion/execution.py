"""Running one task: resolve its inputs, call the function, shape the outcome.

Shared by the in-process worker threads and the networked worker processes,
so both report results and errors the same way.
"""
from __future__ import annotations

import traceback

from .errors import portable
from .object_ref import ObjectRef
from .options import retryable
from .scheduler.events import Failure


class Outcome:
    """``values`` (one per return id) on success, else ``failure`` and flags."""

    __slots__ = ("values", "failure", "retryable", "cancelled")

    def __init__(self, values=None, failure=None, retryable=False, cancelled=False):
        self.values = values
        self.failure = failure
        self.retryable = retryable
        self.cancelled = cancelled


def resolve_args(args, kwargs, inputs):
    """Replace top-level ObjectRefs by their values (refs nested in containers stay refs)."""
    if inputs:
        args = tuple(inputs[a.id] if type(a) is ObjectRef else a for a in args)
        if kwargs:
            kwargs = {k: inputs[v.id] if type(v) is ObjectRef else v for k, v in kwargs.items()}
    return args, kwargs


def run(function, args, kwargs, num_returns, retry_exceptions, task_name):
    """Call ``function``; never raises (but for a stray KeyboardInterrupt outside it)."""
    try:
        result = function(*args, **kwargs) if kwargs else function(*args)
        if num_returns == 1:
            return Outcome([result])
        values = list(result)
        if len(values) != num_returns:
            raise ValueError(f"task {task_name} declared num_returns={num_returns} but returned "
                             f"{len(values)} values")
        return Outcome(values)
    except KeyboardInterrupt as exc:
        return Outcome(failure=task_failure(exc, task_name), cancelled=True)
    except BaseException as exc:  # noqa: BLE001 - everything a task raises goes to its caller
        return Outcome(failure=task_failure(exc, task_name), retryable=retryable(retry_exceptions, exc))


def task_failure(exc, task_name):
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None  # frames hold locals we must not keep alive or pickle
    return Failure("task_error", f"{type(exc).__name__}: {exc}", (portable(exc), text, task_name))
