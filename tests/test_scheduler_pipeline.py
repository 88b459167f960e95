"""Unit tests for pipelining in the sans-I/O scheduler (orion.scheduler).

A node that joins with ``pipeline=True`` lets a busy worker be sent its next
task while it runs one: the task is ASSIGNED (queued on the worker) and starts
there, without a new Dispatch, when the current one ends. The rules tested here:

* only on pipeline nodes, only when no idle worker can take the task, only
  while the task's queue (its backlog) is longer than the node has workers and
  the node starts no worker;
* only behind a busy, non-blocked worker whose current task has exactly the
  same demand, and one task at most behind a worker;
* promotion on TaskFinished / TaskErrored: the resources pass over, the attempt
  counts, node accounting (``nodes()``) stays right;
* TaskRejected (the worker's task blocked in get) requeues the task at the
  front of its queue without using a retry; stale ones are ignored;
* a lost worker or node requeues its assigned task the same way;
* cancelling an ASSIGNED task interrupts it without force and it ends
  cancelled when the worker reports it, rejects it or dies.

Each test drives ``Scheduler.handle`` one event at a time and asserts the exact
list of commands each event returns.
"""
from __future__ import annotations

import pytest

from orion.scheduler import (ASSIGNED, PENDING, READY, RUNNING, CancelRequested, Dispatch, FailTask, Failure,
                             InterruptTask, NodeJoined, NodeLost, Publish, Retry, Scheduler, StartWorker,
                             StopWorker, TaskErrored, TaskFinished, TaskRejected, TaskSpec, TaskSubmitted,
                             WorkerBlocked, WorkerJoined, WorkerLost, WorkerUnblocked)

pytestmark = pytest.mark.timeout(10)

BOOM = Failure("task_error", "Traceback\nValueError: boom", payload="exc")


# ------------------------------------------------------------------ helpers
def spec(task_id, deps=(), demand=None, max_retries=3, name=""):
    return TaskSpec(task_id, (ret(task_id),), tuple(deps),
                    {"CPU": 1.0} if demand is None else demand, max_retries, name,
                    payload=("payload", task_id))


def ret(task_id):
    return f"{task_id}.r"


def make(nodes, policy="least_loaded"):
    """A scheduler with ``nodes``: {node_id: (resources, [worker ids], pipeline)}.
    Every node's base_workers is its number of workers."""
    s = Scheduler(policy)
    for node_id, (resources, workers, pipeline) in nodes.items():
        assert s.handle(NodeJoined(node_id, resources, base_workers=len(workers), pipeline=pipeline)) == []
        for worker_id in workers:
            assert s.handle(WorkerJoined(worker_id, node_id)) == []
    return s


def one_node(cpus=1.0, workers=("w1",), pipeline=True, **extra):
    return make({"n1": ({"CPU": cpus, **extra}, list(workers), pipeline)})


def submit(s, sp):
    return s.handle(TaskSubmitted(sp))


def node_info(s, node_id):
    (info,) = [n for n in s.nodes() if n["node_id"] == node_id]
    return info


def counts(pending=0, ready=0, running=0, assigned=0):
    return {PENDING: pending, READY: ready, RUNNING: running, ASSIGNED: assigned}


def cancelled(task_id):
    return Failure("cancelled", f"task {task_id} was cancelled")


def running_and_assigned(cpus=1.0, **retries):
    """One pipeline node, one worker w1: a runs, b is assigned behind it, c waits.
    ``retries`` gives max_retries per task name."""
    s = one_node(cpus)
    a, b, c = (spec(t, max_retries=retries.get(t, 3)) for t in "abc")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == []  # a backlog of one, for one worker: wait
    assert submit(s, c) == [Dispatch(b, "w1", "n1")]  # a backlog of two: b goes behind a
    assert s.task_state("b") == ASSIGNED and s.task_state("c") == READY
    return s, a, b, c


# ----------------------------------------------------------- assignment
def test_busy_worker_gets_its_next_task_and_runs_it_without_a_new_dispatch():
    s, a, b, c = running_and_assigned()
    assert s.worker_task("w1") == "a"
    assert s.counts() == counts(ready=1, running=1, assigned=1)
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    assert node_info(s, "n1")["running"] == 1
    # One task at most behind a worker.
    d = spec("d")
    assert submit(s, d) == []
    assert s.counts() == counts(ready=2, running=1, assigned=1)
    # a ends: b starts on w1 at once (no Dispatch for it) and c goes behind b.
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(c, "w1", "n1")]
    assert s.task_state("b") == RUNNING and s.worker_task("w1") == "b"
    assert s.task_state("c") == ASSIGNED and s.task_state("d") == READY
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    assert node_info(s, "n1")["running"] == 1
    # b ends: c starts; d alone in its queue (backlog 1 for 1 worker) waits.
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),))]
    assert s.worker_task("w1") == "c" and s.task_state("d") == READY
    # c ends: w1 is idle and d is dispatched the ordinary way.
    assert s.handle(TaskFinished("c", "w1")) == [Publish("c", (ret("c"),)), Dispatch(d, "w1", "n1")]
    assert s.handle(TaskFinished("d", "w1")) == [Publish("d", (ret("d"),))]
    assert s.counts() == counts()
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}
    assert node_info(s, "n1")["running"] == 0


def test_a_node_without_pipelining_never_assigns():
    s = one_node(pipeline=False)
    tasks = [spec(t) for t in "abcde"]
    assert submit(s, tasks[0]) == [Dispatch(tasks[0], "w1", "n1")]
    for t in tasks[1:]:
        assert submit(s, t) == []
    assert s.counts() == counts(ready=4, running=1)
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(tasks[1], "w1", "n1")]


def test_an_idle_worker_of_another_node_is_preferred():
    s = make({"n1": ({"CPU": 1.0}, ["w1"], True), "n2": ({"CPU": 1.0}, ["w2"], False)})
    a, b, c, d, e = (spec(t) for t in "abcde")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == [Dispatch(b, "w2", "n2")]  # idle w2, not behind a
    assert submit(s, c) == []
    assert submit(s, d) == [Dispatch(c, "w1", "n1")]
    # w1 has a task queued and n2 does not pipeline.
    assert submit(s, e) == []
    assert s.counts() == counts(ready=2, running=2, assigned=1)


def test_an_idle_worker_without_resources_does_not_stop_pipelining():
    s = one_node(1.0, workers=("w1", "w2"))
    a, b, c, d = (spec(t) for t in "abcd")
    assert submit(s, a) == [Dispatch(a, "w2", "n1")]  # idle workers are a stack
    assert submit(s, b) == []
    assert submit(s, c) == []  # backlog 2, for 2 workers
    assert submit(s, d) == [Dispatch(b, "w2", "n1")]  # backlog 3: b behind a, not on idle w1
    assert s.worker_task("w1") is None


def test_backlog_must_exceed_the_node_workers():
    s = one_node(2.0, workers=("w1", "w2"))
    a, b, c, d, e, f = (spec(t) for t in "abcdef")
    assert submit(s, a) == [Dispatch(a, "w2", "n1")]
    assert submit(s, b) == [Dispatch(b, "w1", "n1")]
    assert submit(s, c) == []
    assert submit(s, d) == []
    # Backlog 3 for 2 workers: one task goes behind a busy worker, the rest wait.
    # Workers are tried in join order (deterministic, whatever the hash seed).
    assert submit(s, e) == [Dispatch(c, "w1", "n1")]
    assert s.counts() == counts(ready=2, running=2, assigned=1)
    assert submit(s, f) == [Dispatch(d, "w2", "n1")]
    assert s.counts() == counts(ready=2, running=2, assigned=2)


def test_no_pipelining_while_the_node_starts_workers():
    s = Scheduler()
    assert s.handle(NodeJoined("n1", {"CPU": 1.0}, base_workers=2, pipeline=True)) == []
    assert s.handle(WorkerJoined("w1", "n1")) == []
    a, b, c, d = (spec(t) for t in "abcd")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == []
    assert submit(s, c) == []  # backlog 2 > 1 worker, but w2 is on its way
    assert submit(s, d) == []
    # w2 joins (no CPU for it): backlog 3 > 2 workers: b goes behind a.
    assert s.handle(WorkerJoined("w2", "n1")) == [Dispatch(b, "w1", "n1")]


def test_only_a_worker_running_the_same_demand_gets_a_next_task():
    s = one_node(1.0, GPU=1.0)
    a = spec("a", demand={"CPU": 1.0})
    half1, half2 = spec("h1", demand={"CPU": 0.5}), spec("h2", demand={"CPU": 0.5})
    d, e = spec("d", demand={"CPU": 1.0}), spec("e", demand={"CPU": 1.0})
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, half1) == []
    assert submit(s, half2) == []  # backlog 2 > 1, but a demands 1 CPU, not 0.5
    assert submit(s, d) == []
    assert submit(s, e) == [Dispatch(d, "w1", "n1")]
    # a ends: d takes over; the half-CPU tasks still cannot go behind d.
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    assert s.worker_task("w1") == "d"
    # d ends: w1 is idle and h1 runs; h2 fits the other half CPU: a worker is
    # started for it (and nothing goes behind a worker while one starts).
    assert s.handle(TaskFinished("d", "w1")) == [Publish("d", (ret("d"),)), Dispatch(half1, "w1", "n1"),
                                                 StartWorker("n1")]
    assert node_info(s, "n1")["available"] == {"CPU": 0.5, "GPU": 1.0}
    assert s.task_state("h2") == READY and s.task_state("e") == READY


def test_same_demand_ignores_key_order():
    s = one_node(1.0, GPU=1.0)
    a = spec("a", demand={"CPU": 1.0, "GPU": 1.0})
    b, c = spec("b", demand={"GPU": 1.0, "CPU": 1.0}), spec("c", demand={"GPU": 1.0, "CPU": 1.0})
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == []
    assert submit(s, c) == [Dispatch(b, "w1", "n1")]
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    assert node_info(s, "n1")["available"] == {"CPU": 0.0, "GPU": 0.0}


# ------------------------------------------------------------ promotion
def test_promotion_on_retryable_error_counts_the_attempt():
    s, a, b, c = running_and_assigned(a=1, b=1)
    # a errs: b starts on w1; a is retried and, with a backlog of 2, goes behind b.
    assert s.handle(TaskErrored("a", "w1", BOOM, retryable=True)) == [
        Retry("a", 2, "raised: ValueError: boom"), Dispatch(c, "w1", "n1")]
    assert s.worker_task("w1") == "b" and s.task_state("a") == READY and s.task_state("c") == ASSIGNED
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    assert node_info(s, "n1")["running"] == 1
    # b's first attempt was its promotion: its retry is attempt 2.
    assert s.handle(TaskErrored("b", "w1", BOOM, retryable=True)) == [Retry("b", 2, "raised: ValueError: boom"),
                                                                      Dispatch(a, "w1", "n1")]
    assert s.worker_task("w1") == "c" and s.task_state("a") == ASSIGNED and s.task_state("b") == READY
    assert s.handle(TaskFinished("c", "w1")) == [Publish("c", (ret("c"),))]
    assert s.worker_task("w1") == "a"
    # a's retries are used up now (1 of 1); w1 is idle and b runs there.
    assert s.handle(TaskErrored("a", "w1", BOOM, retryable=True)) == [FailTask("a", (ret("a"),), BOOM),
                                                                      Dispatch(b, "w1", "n1")]
    assert s.handle(TaskErrored("b", "w1", BOOM, retryable=True)) == [FailTask("b", (ret("b"),), BOOM)]
    assert s.counts() == counts()
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}
    assert node_info(s, "n1")["running"] == 0
    assert node_info(s, "n1")["workers"] == 1


def test_promotion_on_fatal_error_and_on_cancelled_report():
    s, a, b, c = running_and_assigned()
    child = spec("child", deps=[ret("a")])
    assert submit(s, child) == []
    assert s.handle(TaskErrored("a", "w1", BOOM)) == [FailTask("a", (ret("a"),), BOOM),
                                                      FailTask("child", (ret("child"),), BOOM)]
    assert s.worker_task("w1") == "b" and s.task_state("b") == RUNNING
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    # The worker's own cancel report (no cancel requested) ends b cancelled; c runs.
    assert s.handle(TaskErrored("b", "w1", BOOM, cancelled=True)) == [FailTask("b", (ret("b"),), cancelled("b")),
                                                                      Dispatch(c, "w1", "n1")]
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    assert node_info(s, "n1")["running"] == 1


def test_finish_or_error_report_for_an_assigned_task_is_ignored():
    s, a, b, c = running_and_assigned()
    assert s.handle(TaskFinished("b", "w1")) == []
    assert s.handle(TaskErrored("b", "w1", BOOM, retryable=True)) == []
    assert s.handle(TaskErrored("b", "w1", BOOM, cancelled=True)) == []
    assert s.task_state("b") == ASSIGNED and s.worker_task("w1") == "a"
    assert s.counts() == counts(ready=1, running=1, assigned=1)
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),)), Dispatch(c, "w1", "n1")]


def test_blocked_worker_gets_no_next_task_until_it_unblocks():
    s = one_node(1.0, workers=("w1", "w2"))
    a, b, c, d, e, f, g = (spec(t) for t in "abcdefg")
    assert submit(s, a) == [Dispatch(a, "w2", "n1")]
    assert s.handle(WorkerBlocked("w2")) == []
    assert submit(s, b) == [Dispatch(b, "w1", "n1")]  # a's CPU is lent to b
    assert submit(s, c) == []
    assert submit(s, d) == []
    assert submit(s, e) == [Dispatch(c, "w1", "n1")]  # behind b, not behind blocked a
    assert submit(s, f) == []  # w1 has c queued and w2 is blocked
    assert s.handle(WorkerUnblocked("w2")) == []
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}  # -1 in truth: a short oversubscription
    assert submit(s, g) == [Dispatch(d, "w2", "n1")]
    assert s.counts() == counts(ready=3, running=2, assigned=2)


def test_block_and_unblock_before_the_next_task_arrived_keeps_it():
    """The worker blocked and unblocked before it received its next task (it
    only rejects what it holds while blocked): the task is promoted as usual."""
    s, a, b, c = running_and_assigned()
    assert s.handle(WorkerBlocked("w1")) == [StartWorker("n1")]  # a's CPU is free, c waits for it
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}
    assert s.handle(WorkerUnblocked("w1")) == []
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    assert s.worker_task("w1") == "b"
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    assert node_info(s, "n1")["running"] == 1
    # The worker started for c joins, but b holds the CPU: c waits (a backlog of
    # 1 for 2 workers) and the idle extra worker is stopped.
    assert s.handle(WorkerJoined("w2", "n1")) == [StopWorker("w2")]
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),)), Dispatch(c, "w1", "n1")]


# ------------------------------------------------------------- rejection
def test_rejected_task_goes_to_the_front_of_its_queue_without_using_a_retry():
    s, a, b, c = running_and_assigned(b=1)
    d = spec("d")
    assert submit(s, d) == []
    # a waits in get: its CPU is free, and a worker is started for the queue.
    assert s.handle(WorkerBlocked("w1")) == [StartWorker("n1")]
    assert s.handle(TaskRejected("b", "w1")) == []
    assert s.task_state("b") == READY
    assert s.counts() == counts(ready=3, running=1)
    # b, back at the front, runs before c and d on the new worker.
    assert s.handle(WorkerJoined("w2", "n1")) == [Dispatch(b, "w2", "n1")]
    # It never started before: this is attempt 1, and its one retry is still there.
    assert s.handle(TaskErrored("b", "w2", BOOM, retryable=True)) == [Retry("b", 2, "raised: ValueError: boom"),
                                                                      Dispatch(c, "w2", "n1")]
    assert s.handle(TaskFinished("c", "w2")) == [Publish("c", (ret("c"),)), Dispatch(d, "w2", "n1")]
    assert s.handle(TaskFinished("d", "w2")) == [Publish("d", (ret("d"),)), Dispatch(b, "w2", "n1")]
    assert s.handle(TaskErrored("b", "w2", BOOM, retryable=True)) == [FailTask("b", (ret("b"),), BOOM)]


def test_rejected_task_is_assigned_again_elsewhere():
    s = make({"n1": ({"CPU": 1.0}, ["w1"], True), "n2": ({"CPU": 1.0}, ["w2"], True)})
    a, b, c, d, e = (spec(t) for t in "abcde")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == [Dispatch(b, "w2", "n2")]
    assert submit(s, c) == []
    assert submit(s, d) == [Dispatch(c, "w1", "n1")]
    assert submit(s, e) == [Dispatch(d, "w2", "n2")]
    assert s.handle(WorkerBlocked("w1")) == [StartWorker("n1")]
    assert s.handle(TaskRejected("c", "w1")) == []
    assert s.counts() == counts(ready=2, running=2, assigned=1)
    # b ends: d takes w2 over and c, first in the queue, goes behind it.
    assert s.handle(TaskFinished("b", "w2")) == [Publish("b", (ret("b"),)), Dispatch(c, "w2", "n2")]
    assert s.handle(WorkerJoined("w3", "n1")) == [Dispatch(e, "w3", "n1")]
    assert s.counts() == counts(running=3, assigned=1)


def test_reject_before_the_blocked_report_does_not_bounce_back():
    """The real worker sends its queued task back just before it reports
    itself blocked: the scheduler must not hand the task straight back to it."""
    s, a, b, c = running_and_assigned()
    assert s.handle(TaskRejected("b", "w1")) == []
    assert s.task_state("b") == READY
    assert s.handle(WorkerBlocked("w1")) == [StartWorker("n1")]
    assert s.handle(WorkerJoined("w2", "n1")) == [Dispatch(b, "w2", "n1")]
    # Unblocked, w1 may take a next task again.
    assert s.handle(WorkerUnblocked("w1")) == []
    assert s.handle(TaskFinished("b", "w2")) == [Publish("b", (ret("b"),)), StopWorker("w2")]
    d = spec("d")
    assert submit(s, d) == [Dispatch(c, "w1", "n1")]


def test_a_worker_that_rejected_takes_a_next_task_again_once_its_task_ends():
    s, a, b, c = running_and_assigned()
    assert s.handle(TaskRejected("b", "w1")) == []
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]
    d = spec("d")
    assert submit(s, d) == [Dispatch(c, "w1", "n1")]


def test_stale_rejections_are_ignored():
    s = make({"n1": ({"CPU": 1.0}, ["w1"], True), "n2": ({"GPU": 1.0}, ["w2"], True)})
    a, b, c = spec("a"), spec("b"), spec("c")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == []
    assert submit(s, c) == [Dispatch(b, "w1", "n1")]
    for stale in [TaskRejected("b", "w2"),  # another worker
                  TaskRejected("b", "nobody"),  # unknown worker
                  TaskRejected("a", "w1"),  # running, not assigned
                  TaskRejected("c", "w1"),  # queued
                  TaskRejected("zzz", "w1")]:  # unknown task
        assert s.handle(stale) == [], stale
        assert s.counts() == counts(ready=1, running=1, assigned=1)
        assert s.task_state("b") == ASSIGNED
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    assert s.handle(TaskRejected("b", "w1")) == []  # promoted: it runs now
    assert s.task_state("b") == RUNNING and s.worker_task("w1") == "b"
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),)), Dispatch(c, "w1", "n1")]
    assert s.handle(TaskRejected("b", "w1")) == []  # finished
    assert s.handle(TaskFinished("c", "w1")) == [Publish("c", (ret("c"),))]
    assert s.counts() == counts()
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}


# ------------------------------------------------------- losses
def test_worker_lost_retries_its_running_task_and_requeues_its_next_one():
    s, a, b, c = running_and_assigned(a=1, b=0, c=0)
    assert s.handle(WorkerLost("w1", "crashed")) == [Retry("a", 2, "worker w1 on node n1 died: crashed"),
                                                     StartWorker("n1")]
    assert s.counts() == counts(ready=3)
    info = node_info(s, "n1")
    assert info["available"] == {"CPU": 1.0} and info["running"] == 0 and info["workers"] == 0
    # b (front: requeued without using its retry budget of 0) runs; c goes behind it.
    assert s.handle(WorkerJoined("w2", "n1")) == [Dispatch(b, "w2", "n1"), Dispatch(c, "w2", "n1")]
    assert s.handle(WorkerLost("w2", "crashed")) == [
        FailTask("b", (ret("b"),), Failure("worker_crashed", "task b failed after 1 attempt(s): "
                                                             "worker w2 on node n1 died: crashed")),
        StartWorker("n1")]
    assert s.task_state("c") == READY
    assert s.handle(WorkerJoined("w3", "n1")) == [Dispatch(c, "w3", "n1")]
    assert s.handle(TaskFinished("c", "w3")) == [Publish("c", (ret("c"),)), Dispatch(a, "w3", "n1")]
    assert s.handle(TaskFinished("a", "w3")) == [Publish("a", (ret("a"),))]
    assert s.counts() == counts()
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}


def test_node_lost_retries_running_tasks_and_requeues_assigned_ones():
    s = make({"n1": ({"CPU": 1.0}, ["w1"], True), "n2": ({"CPU": 1.0}, ["w2"], True)})
    a, b, c, d, e = (spec(t, max_retries=0 if t in "cd" else 3) for t in "abcde")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == [Dispatch(b, "w2", "n2")]
    assert submit(s, c) == []
    assert submit(s, d) == [Dispatch(c, "w1", "n1")]
    assert submit(s, e) == [Dispatch(d, "w2", "n2")]
    assert s.handle(NodeLost("n1", "chaos")) == [Retry("a", 2, "node n1 lost (chaos) while worker w1 ran it")]
    assert node_info(s, "n1") == {"node_id": "n1", "address": None, "alive": False, "resources": {"CPU": 1.0},
                                  "available": {}, "running": 0, "workers": 0}
    assert s.counts() == counts(ready=3, running=1, assigned=1)
    # The queue is c (requeued at the front), e, a (retried at the back).
    assert s.handle(TaskFinished("b", "w2")) == [Publish("b", (ret("b"),)), Dispatch(c, "w2", "n2")]
    assert s.handle(TaskFinished("d", "w2")) == [Publish("d", (ret("d"),)), Dispatch(e, "w2", "n2")]
    assert s.handle(TaskFinished("c", "w2")) == [Publish("c", (ret("c"),))]
    assert s.handle(TaskFinished("e", "w2")) == [Publish("e", (ret("e"),)), Dispatch(a, "w2", "n2")]
    assert s.handle(TaskFinished("a", "w2")) == [Publish("a", (ret("a"),))]
    assert s.counts() == counts()
    assert node_info(s, "n2")["available"] == {"CPU": 1.0} and node_info(s, "n2")["running"] == 0


def test_node_reregistering_requeues_its_assigned_task():
    s, a, b, c = running_and_assigned(b=0)
    assert s.handle(NodeJoined("n1", {"CPU": 1.0}, base_workers=1, pipeline=True)) == [
        Retry("a", 2, "node n1 lost (node re-registered) while worker w1 ran it")]
    assert s.counts() == counts(ready=3)
    assert s.handle(WorkerJoined("w9", "n1")) == [Dispatch(b, "w9", "n1"), Dispatch(c, "w9", "n1")]


# ----------------------------------------------------------- cancellation
def test_cancel_of_an_assigned_task_interrupts_without_force_once():
    s, a, b, c = running_and_assigned()
    assert s.handle(CancelRequested("b", force=True)) == [InterruptTask("b", "w1", False)]
    assert s.handle(CancelRequested("b", force=True)) == []
    assert s.handle(CancelRequested("b")) == []
    assert s.task_state("b") == ASSIGNED
    assert s.counts() == counts(ready=1, running=1, assigned=1)


@pytest.mark.parametrize("ending", ["errored_cancelled", "errored_retryable", "finished", "force_then_lost",
                                    "rejected", "worker_lost", "node_lost"])
def test_cancelled_assigned_task_ends_cancelled(ending):
    s, a, b, c = running_and_assigned()
    child = spec("child", deps=[ret("b")])
    assert submit(s, child) == []
    assert s.handle(CancelRequested("b", force=True)) == [InterruptTask("b", "w1", False)]
    ended = [FailTask("b", (ret("b"),), cancelled("b")), FailTask("child", (ret("child"),), cancelled("b"))]
    if ending == "rejected":
        assert s.handle(WorkerBlocked("w1")) == [StartWorker("n1")]
        assert s.handle(TaskRejected("b", "w1")) == ended  # no retry, no dispatch
        assert s.handle(WorkerJoined("w2", "n1")) == [Dispatch(c, "w2", "n1")]
    elif ending == "worker_lost":
        assert s.handle(WorkerLost("w1")) == ended + [Retry("a", 2, "worker w1 on node n1 died: worker died"),
                                                      StartWorker("n1")]
    elif ending == "node_lost":
        assert s.handle(NodeLost("n1")) == ended + [Retry("a", 2, "node n1 lost (node lost) while worker w1 ran it")]
    else:
        # a ends: b is promoted (the worker skips it and reports it cancelled).
        assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
        assert s.task_state("b") == RUNNING and s.worker_task("w1") == "b"
        assert s.handle(CancelRequested("b")) == []  # already interrupted
        if ending == "force_then_lost":
            # Running now: a forced cancel may kill its worker.
            assert s.handle(CancelRequested("b", force=True)) == [InterruptTask("b", "w1", True)]
            assert s.handle(WorkerLost("w1", "killed")) == ended + [StartWorker("n1")]
        else:
            report = {"errored_cancelled": TaskErrored("b", "w1", BOOM, cancelled=True),
                      "errored_retryable": TaskErrored("b", "w1", BOOM, retryable=True),
                      "finished": TaskFinished("b", "w1")}[ending]
            assert s.handle(report) == ended + [Dispatch(c, "w1", "n1")]
    assert s.task_state("b") is None and s.task_state("child") is None


def test_cancel_of_the_running_task_leaves_the_assigned_one():
    s, a, b, c = running_and_assigned()
    assert s.handle(CancelRequested("a")) == [InterruptTask("a", "w1", False)]
    assert s.handle(TaskErrored("a", "w1", BOOM, cancelled=True)) == [FailTask("a", (ret("a"),), cancelled("a"))]
    assert s.worker_task("w1") == "b"
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),)), Dispatch(c, "w1", "n1")]


def test_counts_and_nodes_after_a_long_pipelined_run():
    s = one_node(2.0, workers=("w1", "w2"))
    tasks = [spec(f"t{i}") for i in range(12)]
    dispatched = []
    for t in tasks:
        dispatched += submit(s, t)
    published = 0
    while True:
        running = [w for w in ("w1", "w2") if s.worker_task(w)]
        if not running:
            break
        c = s.counts()
        assert c[RUNNING] == len(running) and c[ASSIGNED] <= 2
        assert node_info(s, "n1")["running"] == len(running)
        assert node_info(s, "n1")["available"] == {"CPU": 2.0 - len(running)}
        out = s.handle(TaskFinished(s.worker_task(running[0]), running[0]))
        published += sum(isinstance(x, Publish) for x in out)
        dispatched += [x for x in out if isinstance(x, Dispatch)]
    assert published == 12
    assert sorted(d.spec.task_id for d in dispatched) == sorted(t.task_id for t in tasks)  # each once
    assert s.counts() == counts()
    assert node_info(s, "n1")["available"] == {"CPU": 2.0} and node_info(s, "n1")["running"] == 0


def test_a_deeper_pipeline_queues_several_tasks_and_runs_them_in_order():
    s = one_node(pipeline=2)
    dispatched = [c.spec.task_id for name in "abcde" for c in submit(s, spec(name)) if isinstance(c, Dispatch)]
    assert dispatched == ["a", "b", "c"]  # one running, two queued behind it
    assert s.counts() == counts(ready=2, running=1, assigned=2)
    # Each end promotes the next queued task and queues one more from the backlog.
    commands = s.handle(TaskFinished("a", "w1"))
    assert [c.spec.task_id for c in commands if isinstance(c, Dispatch)] == ["d"]
    assert s.worker_task("w1") == "b"
    # Blocking sends the queue back in order; a lost worker requeues what is left.
    s.handle(TaskRejected("c", "w1"))
    s.handle(WorkerLost("w1", "killed"))
    assert s.counts()[ASSIGNED] == 0
    s.handle(WorkerJoined("w2", "n1"))
    # Queue now: d (requeued first), c (sent back), e, then b (retried, at the back).
    assert s.worker_task("w2") == "d"
