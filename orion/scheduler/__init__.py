"""The sans-I/O scheduler shared by every Orion runtime (see ``state.py``)."""
from .commands import (Dispatch, FailTask, InterruptTask, Publish, RecallTasks, ReleaseObject, Retry, StartWorker,
                       StopWorker)
from .events import (CancelRequested, Failure, InputLost, NodeJoined, NodeLost, ObjectLocated, ObjectLost,
                     ObjectPut, ObjectsReleased, TaskErrored, TaskFinished, TaskRejected, TaskSpec, TaskSubmitted,
                     Tick, WorkerBlocked, WorkerJoined, WorkerLost, WorkerUnblocked)
from .state import ASSIGNED, CANCELLED, FAILED, FINISHED, PENDING, READY, RUNNING, Scheduler, fits

__all__ = [name for name in dir() if not name.startswith("_")]
