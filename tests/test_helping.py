"""Helping, end to end on an embedded cluster: a task that waits in ``get`` for
tasks it submitted has its own worker process run them, inside the ``get``
(see "Helping" in ``orion/scheduler/state.py``), instead of the node starting
another worker process for the wait."""
from __future__ import annotations

import os
import signal

import pytest

import orion
from conftest import touch, wait_for_file

pytestmark = [pytest.mark.timeout(60)]


@orion.remote
def chain_of_pids(depth):
    """Each level waits for the next; returns the pid of every level."""
    if depth == 0:
        return [os.getpid()]
    return [os.getpid()] + orion.get(chain_of_pids.remote(depth - 1))


@orion.remote
def gated(gate, pid_file=None):
    if pid_file is not None:
        touch(pid_file, str(os.getpid()))
    wait_for_file(gate)
    return "released"


@orion.remote
def waits_for_gated(gate, started, pid_file=None, interrupted=None):
    touch(started, str(os.getpid()))
    try:
        return orion.get(gated.remote(gate, pid_file))
    except KeyboardInterrupt:
        if interrupted is not None:
            touch(interrupted)
        raise


@orion.remote
def bad_child():
    raise ValueError("child failed")


@orion.remote
def catches_child_error():
    try:
        orion.get(bad_child.remote())
    except orion.TaskError as exc:
        return f"caught: {exc.cause!r}"
    return "not raised"


@orion.remote
def fan_out(n):
    return sum(orion.get([square.remote(i) for i in range(n)]))


@orion.remote
def square(i):
    return i * i


def test_a_recursive_task_runs_every_level_in_its_one_worker():
    orion.init(num_workers=1)
    pids = orion.get(chain_of_pids.remote(20))
    assert len(pids) == 21
    assert len(set(pids)) == 1  # no worker process was started for the waits
    assert orion.nodes()[0]["workers"] == 1


def test_fan_out_and_back_on_two_workers_is_right():
    orion.init(num_workers=2)
    assert orion.get([fan_out.remote(10) for _ in range(50)]) == [285] * 50


def test_an_error_in_a_helped_child_reaches_the_waiting_parent():
    orion.init(num_workers=1)
    assert orion.get(catches_child_error.remote()) == "caught: ValueError('child failed')"


def test_cancelling_a_task_suspended_under_its_running_child(tmp_path):
    """The child runs inside the parent's get, on the parent's worker; the
    parent is cancelled meanwhile: it ends cancelled (interrupted once the
    child returns, if the interrupt reached the worker by then), and the
    worker goes on serving."""
    orion.init(num_workers=1)
    gate, started = tmp_path / "gate", tmp_path / "started"
    child_pid = tmp_path / "child_pid"
    ref = waits_for_gated.remote(str(gate), str(started), str(child_pid))
    wait_for_file(child_pid)
    assert child_pid.read_text() == started.read_text()  # the child runs in the parent's worker
    orion.cancel(ref)
    touch(gate)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(ref, timeout=30)
    assert orion.get(waits_for_gated.remote(str(gate), str(tmp_path / "again"))) == "released"
    assert orion.nodes()[0]["workers"] == 1


def test_a_worker_killed_while_helping_retries_parent_and_child(tmp_path):
    orion.init(num_workers=1)
    gate, started, child_pid = tmp_path / "gate", tmp_path / "started", tmp_path / "child_pid"
    ref = waits_for_gated.remote(str(gate), str(started), str(child_pid))
    wait_for_file(child_pid)
    first = int(child_pid.read_text())
    child_pid.unlink()
    touch(gate)  # the retries run through at once
    os.kill(first, signal.SIGKILL)
    assert orion.get(ref, timeout=45) == "released"


@orion.remote
def big_child(fill):
    import numpy as np

    return np.full(300_000, fill)  # 2.4 MB: kept in the node's store, not inline


@orion.remote
def sums_big_children():
    return [float(a.sum()) for a in orion.get([big_child.remote(i) for i in range(3)])]


def test_a_helped_childs_large_result_reaches_its_parent():
    pytest.importorskip("numpy")
    orion.init(num_workers=1)
    assert orion.get(sums_big_children.remote()) == [0.0, 300_000.0, 600_000.0]


@orion.remote
def waits_without_helping(gate):
    """``orion.wait`` (it may end early) names nothing to help with: the task
    it waits for needs a worker of its own."""
    ref = gated.remote(gate)
    touch(gate)
    ready, _ = orion.wait([ref], timeout=30)
    return orion.get(ready[0]) if ready else "timed out"


def test_a_wait_that_lasts_gets_an_extra_worker_after_the_delay(tmp_path):
    # One worker, blocked in wait for a task queued behind it: the node starts
    # an extra worker once the wait has lasted extra_worker_delay.
    orion.init(num_workers=1)
    assert orion.get(waits_without_helping.remote(str(tmp_path / "gate")), timeout=45) == "released"

