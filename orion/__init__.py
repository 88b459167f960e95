"""Orion: a small, fast, Ray-style distributed task runtime for Python task graphs.

    import orion

    @orion.remote
    def square(x):
        return x * x

    with orion.init(num_workers=2):
        print(orion.get([square.remote(i) for i in range(4)]))
"""
from .api import (available_resources, cancel, cluster_resources, get, init, is_initialized, nodes, progress,
                  put, shutdown, timeline, wait)
from .errors import (GetTimeoutError, ObjectLostError, OrionError, TaskCancelledError, TaskError,
                     UnschedulableError, WorkerCrashedError)
from .object_ref import ObjectRef
from .remote_function import RemoteFunction, remote

__version__ = "0.1.0"

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "wait", "put", "cancel", "nodes", "progress",
    "cluster_resources", "available_resources", "timeline", "ObjectRef", "RemoteFunction", "OrionError", "TaskError",
    "GetTimeoutError", "TaskCancelledError", "WorkerCrashedError", "ObjectLostError", "UnschedulableError",
]
