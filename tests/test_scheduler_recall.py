"""Unit tests for recall in the sans-I/O scheduler (orion.scheduler, "Recall").

Pipelining queues tasks behind a busy worker's task. When that task runs long
while another worker sits idle with nothing to run, the idle worker waits
``recall_after`` (the runtime feeds a ``Tick``), then every worker whose
queued tasks have not moved since is asked for them back (``RecallTasks``);
what it sends back (``TaskRejected``) runs elsewhere. The tests drive
``Scheduler.handle`` event by event and assert the exact commands.
"""
from __future__ import annotations

import pytest

from orion.scheduler import (NodeJoined, Publish, RecallTasks, Scheduler, TaskFinished, TaskRejected, TaskSpec,
                             TaskSubmitted, Tick, WorkerJoined)

pytestmark = pytest.mark.timeout(10)


def spec(task_id):
    return TaskSpec(task_id, (f"{task_id}.r",), (), {"CPU": 1.0}, 3, "f", payload=None)


def dispatched(commands):
    return [(c.spec.task_id, c.worker_id) for c in commands if hasattr(c, "spec")]


def long_task_with_one_queued(recall_after=0.01):
    """Two workers: w1 runs t2 (the long one) with t3 queued behind it; w2 runs
    t1, t4, t5, t6 and is idle, with nothing to run, from time 1.003."""
    s = Scheduler(recall_after=recall_after)
    s.handle(NodeJoined("n1", {"CPU": 2.0}, base_workers=2, pipeline=2))
    s.handle(WorkerJoined("w1", "n1"))
    s.handle(WorkerJoined("w2", "n1"))
    sent = []
    for task_id in ("t1", "t2", "t3", "t4", "t5", "t6"):
        sent += dispatched(s.handle(TaskSubmitted(spec(task_id))))
    assert sent == [("t1", "w2"), ("t2", "w1"), ("t3", "w1"), ("t4", "w2")]  # t3, t4: queued
    assert dispatched(s.handle(TaskFinished("t1", "w2", 0.001, at=1.0))) == []  # t4 starts there
    assert dispatched(s.handle(TaskFinished("t4", "w2", 0.001, at=1.001))) == [("t5", "w2")]
    assert dispatched(s.handle(TaskFinished("t5", "w2", 0.001, at=1.002))) == [("t6", "w2")]
    assert s.handle(TaskFinished("t6", "w2", 0.001, at=1.003)) == [Publish("t6", ("t6.r",))]
    return s


def test_an_idle_worker_recalls_what_waits_behind_a_long_task():
    s = long_task_with_one_queued()
    assert s.next_deadline() == pytest.approx(1.013)
    assert s.handle(Tick(1.0129)) == []  # not yet
    assert s.handle(Tick(1.013)) == [RecallTasks("w1", "n1", ("t3",))]
    assert s.next_deadline() is None
    assert s.handle(Tick(2.0)) == []  # asked once
    # What the worker sends back runs on the idle one; the long task ends as usual.
    assert dispatched(s.handle(TaskRejected("t3", "w1"))) == [("t3", "w2")]
    assert s.handle(TaskFinished("t2", "w1", 5.0, at=6.0)) == [Publish("t2", ("t2.r",))]
    assert s.handle(TaskFinished("t3", "w2", 0.001, at=6.001)) == [Publish("t3", ("t3.r",))]


def test_a_task_the_worker_had_started_is_simply_not_sent_back():
    s = long_task_with_one_queued()
    assert s.handle(Tick(1.013)) == [RecallTasks("w1", "n1", ("t3",))]
    # t2 ended just as the recall left: t3 started on w1 and finishes there.
    assert s.handle(TaskFinished("t2", "w1", 0.012, at=1.0131)) == [Publish("t2", ("t2.r",))]
    assert s.handle(TaskFinished("t3", "w1", 0.001, at=1.014)) == [Publish("t3", ("t3.r",))]
    assert s.handle(TaskRejected("t3", "w1")) == []  # (a late, stale one is ignored)


def test_no_recall_from_a_queue_that_moved_after_the_worker_went_idle():
    s = long_task_with_one_queued()
    # w1's task ends after w2 went idle (t3 starts there): w1 is not stuck.
    assert s.handle(TaskFinished("t2", "w1", 0.003, at=1.004)) == [Publish("t2", ("t2.r",))]
    assert s.handle(Tick(1.013)) == []


def test_an_idle_worker_that_got_work_recalls_nothing():
    s = long_task_with_one_queued()
    assert dispatched(s.handle(TaskSubmitted(spec("t7")))) == [("t7", "w2")]
    assert s.next_deadline() is None
    assert s.handle(Tick(1.013)) == []


def test_no_recall_without_times_or_when_switched_off():
    s = long_task_with_one_queued(recall_after=None)
    assert s.next_deadline() is None
    assert s.handle(Tick(5.0)) == []
    # A runtime that gives no times (the in-process one) never recalls either.
    s = Scheduler()
    s.handle(NodeJoined("n1", {"CPU": 1.0}, base_workers=1, pipeline=2))
    s.handle(WorkerJoined("w1", "n1"))
    s.handle(TaskSubmitted(spec("t1")))
    s.handle(TaskFinished("t1", "w1", 0.001))
    assert s.next_deadline() is None


def test_a_task_given_back_after_the_one_before_ended_is_requeued_too():
    """The worker answers a recall on another path than its reports: the head
    may first hear that the long task ended (and so count t3 as running there)
    and only then that t3 was given back unstarted."""
    s = long_task_with_one_queued()
    assert s.handle(Tick(1.013)) == [RecallTasks("w1", "n1", ("t3",))]
    assert s.handle(TaskFinished("t2", "w1", 1.0, at=1.014)) == [Publish("t2", ("t2.r",))]
    # Dispatched anew (w1 is free now, and first in line): it had never run.
    assert dispatched(s.handle(TaskRejected("t3", "w1"))) == [("t3", "w1")]
    assert s.handle(TaskFinished("t3", "w1", 0.001, at=1.015)) == [Publish("t3", ("t3.r",))]
    # Both workers are idle again, with nothing held.
    assert sorted(dispatched(s.handle(TaskSubmitted(spec("t8")))) + dispatched(s.handle(TaskSubmitted(spec("t9"))))) \
        == [("t8", "w1"), ("t9", "w2")]


def test_two_tasks_given_back_after_the_long_one_ended_leave_the_books_right():
    """w1 runs t2 with t3 and t4 queued (depth 3); both are recalled, the head
    hears t2 end first (t3, then t4, 'run' there in its books), then both
    rejections: each is requeued once, and nothing stays held on w1."""
    s = Scheduler(recall_after=0.01)
    s.handle(NodeJoined("n1", {"CPU": 2.0}, base_workers=2, pipeline=3))
    s.handle(WorkerJoined("w1", "n1"))
    s.handle(WorkerJoined("w2", "n1"))
    sent = []
    for task_id in ("t1", "t2", "t3", "t4", "t5", "t6", "t7"):
        sent += dispatched(s.handle(TaskSubmitted(spec(task_id))))
    on_w1 = [t for t, w in sent if w == "w1"]
    assert on_w1[0] == "t2" and len(on_w1) >= 3  # t2 runs, at least two queued behind it
    queued = tuple(on_w1[1:])
    # w2 works through everything else, then sits idle from 2.0.
    now = 1.0
    while True:
        running = [t for t, w in sent if w == "w2" and s.task_state(t) == "running"]
        if not running:
            break
        now += 0.001
        sent += dispatched(s.handle(TaskFinished(running[0], "w2", 0.001, at=now)))
    assert s.handle(Tick(now + 0.01)) == [RecallTasks("w1", "n1", queued)]
    s.handle(TaskFinished("t2", "w1", 1.0, at=now + 0.011))  # queued[0] now "runs" on w1
    redone = []
    for task_id in queued:
        redone += dispatched(s.handle(TaskRejected(task_id, "w1")))
    assert sorted(t for t, _ in redone) == sorted(queued)  # each dispatched again, once
    for task_id, worker_id in redone:
        s.handle(TaskFinished(task_id, worker_id, 0.001, at=now + 0.02))
    assert s.counts() == {"pending": 0, "ready": 0, "running": 0, "assigned": 0}
    (info,) = s.nodes()
    assert info["running"] == 0 and info["available"] == {"CPU": 2.0}


def test_nothing_is_queued_behind_tasks_given_back_but_not_yet_heard_of():
    """Until the answer to a recall comes, the head may count a given-back task
    as running on the worker (after the task before it ended); a task queued
    behind it would run on the worker before the head expects it, and its
    report would be taken for a stale one. So none is queued there meanwhile."""
    s = long_task_with_one_queued()
    assert s.handle(Tick(1.013)) == [RecallTasks("w1", "n1", ("t3",))]
    s.handle(TaskFinished("t2", "w1", 1.0, at=1.014))  # t3 "runs" on w1 now, in the head's books
    sent = []
    for task_id in ("t7", "t8", "t9", "t10"):
        sent += dispatched(s.handle(TaskSubmitted(spec(task_id))))
    assert all(worker == "w2" for _, worker in sent)  # w2 only (w1 is not idle, and takes no queue)
    assert dispatched(s.handle(TaskRejected("t3", "w1")))  # the answer: w1 takes work again
