"""Commands returned by the scheduler: what its owner must now do in the world."""
from __future__ import annotations

from dataclasses import dataclass

from .events import Failure, TaskSpec


@dataclass(slots=True)
class Dispatch:
    """Run ``spec`` on ``worker_id`` (which lives on ``node_id``).

    ``nested``: the worker's task waits in ``get`` for this task's results,
    and the worker runs it right there, inside that ``get`` (see "Helping" in
    the scheduler); tasks dispatched together this way run in order."""

    spec: TaskSpec
    worker_id: str
    node_id: str
    nested: bool = False


@dataclass(slots=True)
class Publish:
    """The results the worker reported for this task are accepted: store them
    and tell whoever waits. (A report from a stale or cancelled attempt gets no
    ``Publish``.)"""

    task_id: str
    return_ids: tuple


@dataclass(slots=True)
class FailTask:
    """The task's return objects hold ``failure`` for good."""

    task_id: str
    return_ids: tuple
    failure: Failure


@dataclass(slots=True)
class Retry:
    """The task goes back to the queue after ``reason`` (informational)."""

    task_id: str
    attempt: int
    reason: str


@dataclass(slots=True)
class InterruptTask:
    """Cancel a running task: raise KeyboardInterrupt in it, or with ``force``
    kill its worker."""

    task_id: str
    worker_id: str
    force: bool


@dataclass(slots=True)
class RecallTasks:
    """Ask a worker to send back the tasks queued behind the one it runs
    (pipelining) that it has not started: each comes back as a
    ``TaskRejected``. The one it runs has been running a while and other
    workers are idle."""

    worker_id: str
    node_id: str
    task_ids: tuple


@dataclass(slots=True)
class StartWorker:
    """The node has free resources and queued work but no idle worker (its
    workers are blocked in ``get``): start one more."""

    node_id: str


@dataclass(slots=True)
class StopWorker:
    """An extra worker is idle and not needed any more."""

    worker_id: str


@dataclass(slots=True)
class ReleaseObject:
    object_id: str
