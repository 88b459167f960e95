"""Events fed into the scheduler state machine, and the plain data they carry.

Every event is a small slotted dataclass holding only plain data (ids, numbers,
dicts). The scheduler never sees sockets, threads, pickles or clocks: whoever
owns it (the in-process runtime or the ZeroMQ head) turns what happened in the
world into one of these and passes it to ``Scheduler.handle``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Failure:
    """Why a task did not produce values.

    ``kind`` is one of the ``FAILURE_KINDS``; ``payload`` is opaque to the
    scheduler (the runtime stores a pickled exception there for task errors).
    The same ``Failure`` object is handed to every downstream task, so a
    dependent fails with exactly its ancestor's error.
    """

    kind: str
    message: str
    payload: Any = None


FAILURE_KINDS = (
    "task_error",  # the function raised
    "worker_crashed",  # the worker running it died and retries were used up
    "cancelled",  # orion.cancel
    "object_lost",  # an input is unknown or gone
    "unschedulable",  # its resource demand fits no node
)


@dataclass(slots=True)
class TaskSpec:
    """What the scheduler needs to know about a task.

    ``payload`` is opaque (function, arguments, owner...): the scheduler hands
    it back untouched in the ``Dispatch`` command.
    """

    task_id: str
    return_ids: tuple
    dependencies: tuple = ()
    demand: dict = field(default_factory=lambda: {"CPU": 1.0})
    max_retries: int = 3
    name: str = ""
    payload: Any = None
    # Submitted from inside a running task. Such tasks go to the front of the
    # queue: a recursive graph then runs depth-first, so few workers sit
    # blocked in get waiting for them (breadth-first would block thousands).
    nested: bool = False


@dataclass(slots=True)
class TaskSubmitted:
    spec: TaskSpec


@dataclass(slots=True)
class ObjectPut:
    """A value that no task produces (``orion.put``) is now stored."""

    object_id: str


@dataclass(slots=True)
class TaskFinished:
    """A worker reports that ``task_id`` returned normally."""

    task_id: str
    worker_id: str


@dataclass(slots=True)
class TaskErrored:
    """A worker reports that ``task_id`` raised. ``retryable`` is the worker's
    verdict under the task's ``retry_exceptions`` option (it alone can test the
    exception's class); ``cancelled`` is set when the exception was the
    KeyboardInterrupt of a cancel."""

    task_id: str
    worker_id: str
    failure: Failure
    retryable: bool = False
    cancelled: bool = False


@dataclass(slots=True)
class NodeJoined:
    """A node offers ``resources``. With ``pipeline`` its busy workers may be
    sent their next task before the current one ends (one at most, of the same
    demand), which hides the network round trip between two tasks."""

    node_id: str
    resources: dict
    base_workers: int = 0
    address: str | None = None
    pipeline: bool = False


@dataclass(slots=True)
class NodeLost:
    node_id: str
    reason: str = "node lost"


@dataclass(slots=True)
class WorkerJoined:
    worker_id: str
    node_id: str


@dataclass(slots=True)
class WorkerLost:
    """The worker died (killed, crashed, exited). ``reason`` ends up in the
    ``WorkerCrashedError`` message."""

    worker_id: str
    reason: str = "worker died"


@dataclass(slots=True)
class WorkerBlocked:
    """The worker's running task waits in ``get``: it gives its resources back."""

    worker_id: str


@dataclass(slots=True)
class WorkerUnblocked:
    worker_id: str


@dataclass(slots=True)
class TaskRejected:
    """A worker sends back a task it was given to run next, unstarted (its
    current task blocked in ``get``): run it elsewhere."""

    task_id: str
    worker_id: str


@dataclass(slots=True)
class CancelRequested:
    task_id: str
    force: bool = False


@dataclass(slots=True)
class ObjectsReleased:
    """No client holds these objects any more; free them once no task needs them."""

    object_ids: tuple
