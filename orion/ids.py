"""Ids for tasks and objects: short hex strings, unique across processes.

A task id is this process's random prefix plus a counter; its return objects
are the task id plus a 4-digit index (1..N). ``orion.put`` makes a fresh task
id and uses index 0. Ids are plain strings: cheap to hash, msgpack-friendly.
"""
from __future__ import annotations

import itertools
import os

_prefix = os.urandom(6).hex()
_counter = itertools.count(1)


def reseed():
    """A fresh prefix: ids made from now on cannot collide with earlier ones."""
    global _prefix, _counter
    _prefix = os.urandom(6).hex()
    _counter = itertools.count(1)


def prefix():
    return _prefix


os.register_at_fork(after_in_child=reseed)


def new_task_id():
    return f"{_prefix}{next(_counter):08x}"


def return_ids(task_id, num_returns):
    if num_returns == 1:
        return (task_id + "0001",)
    return tuple(f"{task_id}{i:04x}" for i in range(1, num_returns + 1))


def new_put_id():
    return f"{_prefix}{next(_counter):08x}0000"


def task_of(object_id):
    """The id of the task that produces ``object_id`` (for cancel)."""
    return object_id[:-4]
