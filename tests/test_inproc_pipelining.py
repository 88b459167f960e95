"""Pipelining in the in-process runtime (``orion/transport/inproc.py``): worker
threads run tiny tasks queued on them back to back and report them together,
give queued tasks back when the scheduler recalls them, and hand them back
before their own task waits in ``get``."""
from __future__ import annotations

import collections
import threading
import time

import pytest

import orion
from orion import api

pytestmark = [pytest.mark.timeout(60)]

# Tasks run in threads of this process, so they can wait on these directly.
GATE = threading.Event()
STARTED = threading.Event()
RUNS = collections.Counter()  # index -> times step ran with it
RUNS_LOCK = threading.Lock()


@pytest.fixture(autouse=True)
def _reset_events():
    GATE.clear()
    STARTED.clear()
    RUNS.clear()
    yield
    GATE.set()  # never leave a worker thread waiting


@orion.remote
def step(index, wait=False, run_for=0.0):
    """Quick, unless told to wait for GATE or to take ``run_for`` seconds;
    returns (index, worker thread)."""
    if run_for:
        time.sleep(run_for)
    if wait:
        STARTED.set()
        assert GATE.wait(30), "the gate never opened"
    with RUNS_LOCK:
        RUNS[index] += 1
    return index, threading.current_thread().name


@orion.remote
def maybe_fail(index):
    if index % 3 == 1:
        raise ValueError(f"task {index} fails")
    return index


@orion.remote
def parent(n):
    return sum(orion.get([child.remote(i) for i in range(n)]))


@orion.remote
def child(i):
    return i


def _count_reports(head):
    """Wrap ``head.tasks_done``: returns the list of batch sizes it is called with."""
    sizes = []
    original = head.tasks_done

    def counting(worker_id, reports, *args, **kwargs):
        sizes.append(len(reports))
        return original(worker_id, reports, *args, **kwargs)

    head.tasks_done = counting
    return sizes


def _long_task_after_quick_history(num_workers):
    """An in-process runtime whose scheduler knows ``step`` as quick (so
    pipelining queues many behind a busy worker), running one ``step`` that
    waits for GATE; returns its ref."""
    orion.init(transport="inproc", num_workers=num_workers)
    orion.get([step.remote(-1) for _ in range(200)])
    long = step.remote(0, wait=True)
    assert STARTED.wait(10)
    return long


def test_tiny_tasks_are_reported_together_and_failures_stay_with_their_tasks():
    orion.init(transport="inproc", num_workers=2)
    sizes = _count_reports(api._client.runtime.head)
    refs = [maybe_fail.remote(i) for i in range(300)]
    for i, ref in enumerate(refs):
        if i % 3 == 1:
            with pytest.raises(ValueError, match=f"task {i} fails"):
                orion.get(ref)
        else:
            assert orion.get(ref) == i
    assert sum(sizes) == 200  # each success reported once
    assert max(sizes) > 1  # a worker thread ran several before it took the lock


def test_tasks_queued_behind_a_long_task_are_recalled_and_run_elsewhere_exactly_once():
    long = _long_task_after_quick_history(num_workers=2)
    quick = [step.remote(i) for i in range(1, 201)]
    # Without recall, those queued behind the long task would wait for the gate.
    done = orion.get(quick, timeout=20)
    long_thread = [w for w in threading.enumerate() if w.name.startswith("orion-worker")
                   and w.name not in {name for _, name in done}]
    assert [index for index, _ in done] == list(range(1, 201))
    assert len(long_thread) == 1  # every quick task ran on the other worker
    GATE.set()
    assert orion.get(long, timeout=10) == (0, long_thread[0].name)
    # What the long task's worker still holds in its inbox comes before anything
    # sent to it now: once a later task has run there, it has seen them all.
    later = orion.get([step.remote(1000) for _ in range(200)], timeout=20)
    assert long_thread[0].name in {name for _, name in later}
    assert all(RUNS[i] == 1 for i in range(201)), "a recalled task also ran where it was queued"


def test_a_task_waiting_in_get_hands_back_the_tasks_queued_behind_it():
    # One worker: the children are queued behind their parent (the scheduler
    # does not know yet that it waits); run there, they would never start.
    orion.init(transport="inproc", num_workers=1)
    assert orion.get([parent.remote(5) for _ in range(3)], timeout=20) == [10, 10, 10]


def test_a_result_does_not_wait_for_the_task_queued_behind_it_when_it_ran_long():
    orion.init(transport="inproc", num_workers=1)
    orion.get([step.remote(-1, run_for=0.01) for _ in range(5)])  # history: ~10 ms a run
    first = step.remote(1, run_for=0.02)  # runs at once...
    second = step.remote(2, wait=True)  # ...this one is queued behind it (pipelining)
    third = step.remote(3)
    # The second task waits until we saw the first one's result: reported only
    # after the second, it would never come.
    assert orion.get(first, timeout=5)[0] == 1
    GATE.set()
    assert [index for index, _ in orion.get([second, third], timeout=10)] == [2, 3]


def test_force_cancel_leaves_the_tasks_queued_behind_to_a_fresh_worker_exactly_once():
    long = _long_task_after_quick_history(num_workers=1)
    queued = [step.remote(i) for i in range(1, 51)]  # one worker: queued behind the long task
    old = [w for w in threading.enumerate() if w.name.startswith("orion-worker")]
    orion.cancel(long, force=True)  # abandons the thread (it cannot be killed) and starts another
    assert [index for index, _ in orion.get(queued, timeout=20)] == list(range(1, 51))
    with pytest.raises(orion.TaskCancelledError):
        orion.get(long, timeout=10)
    GATE.set()  # the abandoned thread's task returns; it must run nothing else
    for thread in old:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert all(RUNS[i] == 1 for i in range(1, 51)), "a task queued on the abandoned thread ran twice"


def test_cancelling_a_task_queued_on_a_busy_worker_skips_it_and_no_other():
    long = _long_task_after_quick_history(num_workers=1)
    queued = [step.remote(i) for i in range(1, 21)]  # one worker: queued behind the long task
    orion.cancel(queued[4])
    GATE.set()
    assert orion.get(long, timeout=10)[0] == 0
    for i, ref in enumerate(queued, start=1):
        if i == 5:
            with pytest.raises(orion.TaskCancelledError):
                orion.get(ref, timeout=10)
        else:
            assert orion.get(ref, timeout=10)[0] == i
    assert RUNS[5] == 0 and all(RUNS[i] == 1 for i in range(1, 21) if i != 5)
