"""Per-thread knowledge of "which worker am I running a task in".

A worker (thread or process) sets ``current.worker`` while it runs a task so
that ``get`` knows to tell the scheduler that this worker blocks (and gives its
slot back), and so that a cancel can wake a task blocked in ``get``. The worker
object exposes ``worker_id`` and ``guard()``: a context manager marking
"inside Orion's own code" where an asynchronous KeyboardInterrupt must not land.
"""
from __future__ import annotations

import threading


class _TaskContext(threading.local):
    worker = None


current = _TaskContext()
