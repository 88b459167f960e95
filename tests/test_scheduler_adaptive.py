"""Adaptive pipelining (``Scheduler(adaptive_pipelining=True)``, as the ZeroMQ
head runs it): how many tasks may wait behind a busy worker depends on the
task's name — about PIPELINE_BUDGET seconds of them by their average run time
(two while it is unknown), and none for tasks that were seen waiting in
``get`` (a task queued behind them would only be sent back)."""
from __future__ import annotations

import pytest

from orion.scheduler import (Dispatch, NodeJoined, Scheduler, TaskFinished, TaskSpec, TaskSubmitted, WorkerBlocked,
                             WorkerJoined, WorkerUnblocked)
from orion.scheduler.state import ASSIGNED, PIPELINE_BUDGET, READY

pytestmark = pytest.mark.timeout(10)


def spec(task_id, name):
    return TaskSpec(task_id, (task_id + ".r",), (), {"CPU": 1.0}, 3, name, payload=None)


def scheduler(depth=16, workers=1):
    s = Scheduler(adaptive_pipelining=True)
    s.handle(NodeJoined("n1", {"CPU": float(workers)}, base_workers=workers, pipeline=depth))
    for i in range(workers):
        s.handle(WorkerJoined(f"w{i}", "n1"))
    return s


def submit(s, name, count, start=0):
    commands = []
    for i in range(start, start + count):
        commands += s.handle(TaskSubmitted(spec(f"{name}{i}", name)))
    return commands


def states(s, name, count, start=0):
    return [s.task_state(f"{name}{i}") for i in range(start, start + count)]


def test_unknown_run_time_queues_two_behind_a_busy_worker():
    s = scheduler()
    dispatched = submit(s, "f", 10)
    assert len([c for c in dispatched if isinstance(c, Dispatch)]) == 3  # one running, two queued
    assert states(s, "f", 4)[1:] == [ASSIGNED, ASSIGNED, READY]


def test_tiny_tasks_fill_the_whole_pipeline_once_their_run_time_is_known():
    s = scheduler(depth=16)
    submit(s, "tiny", 1)
    s.handle(TaskFinished("tiny0", "w0", duration=0.00002))  # 20 µs: 100 fit the budget
    submit(s, "tiny", 40, start=1)
    assert states(s, "tiny", 18, start=1).count(ASSIGNED) == 16
    assert s.task_state("tiny18") == READY


def test_long_tasks_queue_one_at_most():
    s = scheduler(depth=16)
    submit(s, "slow", 1)
    s.handle(TaskFinished("slow0", "w0", duration=PIPELINE_BUDGET * 10))
    submit(s, "slow", 10, start=1)
    assert states(s, "slow", 3, start=1)[1:] == [ASSIGNED, READY]


def test_tasks_that_wait_in_get_are_never_queued_behind_a_worker():
    s = scheduler(workers=1)
    submit(s, "parent", 1)
    s.handle(WorkerBlocked("w0"))  # parent0 waits in get: its name is noted
    submit(s, "other", 1, start=0)
    # w0 is blocked, so nothing may queue behind it anyway; once it runs again,
    # more parents still do not queue behind it.
    s.handle(WorkerUnblocked("w0"))
    submit(s, "parent", 5, start=1)
    assert all(state == READY for state in states(s, "parent", 5, start=1))


def test_the_average_follows_recent_runs():
    s = scheduler(depth=16)
    submit(s, "g", 1)
    s.handle(TaskFinished("g0", "w0", duration=1.0))  # long at first
    assert s._pipeline_limit("g") == 1
    for i in range(1, 80):
        submit(s, "g", 1, start=i)
        s.handle(TaskFinished(f"g{i}", "w0", duration=0.00001))  # then tiny
    assert s._pipeline_limit("g") == int(PIPELINE_BUDGET / s._run_times["g"])
    assert s._pipeline_limit("g") > 16


def test_without_adaptive_pipelining_the_node_depth_rules():
    s = Scheduler()
    s.handle(NodeJoined("n1", {"CPU": 1.0}, base_workers=1, pipeline=3))
    s.handle(WorkerJoined("w0", "n1"))
    submit(s, "f", 1)
    s.handle(TaskFinished("f0", "w0", duration=10.0))  # ignored for depth when not adaptive
    submit(s, "f", 6, start=1)
    assert states(s, "f", 6, start=1).count(ASSIGNED) == 3


def test_nothing_queues_behind_a_task_whose_name_waits_in_get():
    s = scheduler(workers=1)
    submit(s, "parent", 1)
    s.handle(WorkerBlocked("w0"))
    s.handle(WorkerUnblocked("w0"))
    s.handle(TaskFinished("parent0", "w0", duration=0.00001))
    submit(s, "parent", 1, start=1)  # runs on w0: a parent again
    submit(s, "child", 5)  # tiny tasks, but behind a parent they would only bounce back
    assert all(state == READY for state in states(s, "child", 5))
