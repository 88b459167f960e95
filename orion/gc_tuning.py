"""The garbage collector's first-generation threshold while Orion runs.

Every task allocates a few dozen short-lived containers (specs, messages,
records); with CPython's default threshold (700 allocations) the collector
runs every few tasks and costs ~10% of the no-op task rate (measured: 11.6k
vs 12.8k tasks/s, benchmarks/). Orion raises it while a cluster is initialised
in a driver (restored at ``shutdown``) and for good in the processes it owns
(worker processes, ``orion head``, ``orion worker``). Only the young-object
threshold changes; older generations keep their rules.
"""
from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000

_saved = None


def raise_threshold():
    """Raise the threshold; returns what it was (for ``restore``)."""
    global _saved
    current = gc.get_threshold()
    if current[0] < YOUNG_THRESHOLD:
        if _saved is None:
            _saved = current
        gc.set_threshold(YOUNG_THRESHOLD, *current[1:])
    return current


def restore():
    global _saved
    if _saved is not None:
        # Only undo our own change: leave a threshold the user set since alone.
        if gc.get_threshold()[0] == YOUNG_THRESHOLD:
            gc.set_threshold(*_saved)
        _saved = None
