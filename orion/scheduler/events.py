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
    # Re-run to rebuild its lost results (the head's lineage). Unlike a user's
    # submit, it is not failed when no live node fits its demand: its node
    # may just have died, and it waits for one that fits, as a task that was
    # queued or running there does.
    rebuild: bool = False


@dataclass(slots=True)
class ObjectPut:
    """A value that no task produces (``orion.put``) is now stored."""

    object_id: str


@dataclass(slots=True)
class TaskFinished:
    """A worker reports that ``task_id`` returned normally, after running it
    ``duration`` seconds (when known: it sizes pipelining, see the scheduler).
    ``at``: when the runtime heard of it (its monotonic clock), or None; with
    it, a worker left idle can recall tasks queued behind a slow one."""

    task_id: str
    worker_id: str
    duration: float | None = None
    at: float | None = None


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
    at: float | None = None  # as TaskFinished.at


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
    """The worker's running task waits in ``get``: it gives its resources back.

    ``task_ids``: the tasks whose results it waits for, all of them (a ``get``
    without timeout); the scheduler may have the worker run those itself while
    it waits. Empty when the wait may end early (``wait``, a timeout)."""

    worker_id: str
    task_ids: tuple = ()
    at: float = 0.0  # when (the runtime's monotonic clock); see Scheduler's extra_worker_delay


@dataclass(slots=True)
class WorkerUnblocked:
    worker_id: str


@dataclass(slots=True)
class Tick:
    """Time passed: ``now`` on the runtime's monotonic clock. The runtime feeds
    one when ``Scheduler.next_deadline()`` is due (the scheduler keeps no clock)."""

    now: float


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


@dataclass(slots=True)
class ObjectLocated:
    """A copy of ``object_id`` (``size`` bytes) is stored on ``node_id``.

    Only large objects are reported: small ones travel with the task. An object
    may have copies on several nodes (all of the same size). Placement prefers
    the node that holds the most bytes of a task's inputs. A report for an
    object the scheduler does not track (never announced, or released) or for
    a node that is not alive is ignored."""

    object_id: str
    node_id: str
    size: int


@dataclass(slots=True)
class ObjectLost:
    """Every copy of the ready object ``object_id`` is gone (its nodes died).

    With ``failure`` None the owner rebuilds it from its lineage: it submits
    the producing task again (a plain ``TaskSubmitted``) right after this
    event, and tasks not dispatched yet wait for the new value. With a
    ``failure`` (a put object, or a producer that may not be retried) the
    object fails for good, and so does every task not dispatched yet that
    needs it, transitively. Ignored for an unknown object or one not ready."""

    object_id: str
    failure: Failure | None = None


@dataclass(slots=True)
class InputLost:
    """The worker given ``task_id`` (running it, or holding it queued) could
    not fetch its input ``object_id``. The worker is free again as if the task
    had ended; the task did not run, so no retry is used up: it waits for the
    object if that is being rebuilt, is queued again at the front if the
    object is ready, and fails with the object's failure if it failed. A
    report for a task that is not on that worker is ignored."""

    task_id: str
    worker_id: str
    object_id: str
