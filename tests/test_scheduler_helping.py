"""Unit tests for helping: a worker whose task waits in ``get`` runs the tasks
it waits for itself (``Dispatch(..., nested=True)``), on a stack of suspended
tasks, instead of lending its resources to a new worker process."""
from __future__ import annotations

import pytest

from orion.scheduler import (ASSIGNED, RUNNING, CancelRequested, Dispatch, InterruptTask, Publish, Retry,
                             StartWorker, TaskErrored, TaskFinished, TaskRejected, TaskSubmitted, WorkerBlocked,
                             WorkerLost, WorkerUnblocked)
from orion.scheduler.events import Failure
from orion.scheduler.state import MAX_NESTING, Scheduler

from test_scheduler import kinds, node_info, one_node, ret, spec, submit

pytestmark = pytest.mark.timeout(10)


def nested(task_id, **kwargs):
    sp = spec(task_id, **kwargs)
    sp.nested = True
    return sp


def parent_with_children(s, children=("c1", "c2"), **child_kwargs):
    """w1 runs p, which submitted ``children``; returns their specs."""
    p = spec("p", name="parent")
    assert submit(s, p) == [Dispatch(p, "w1", "n1")]
    specs = [nested(c, name="child", **child_kwargs) for c in children]
    for c in specs:
        submit(s, c)
    return p, specs


def test_blocked_worker_runs_the_child_it_waits_for_instead_of_starting_a_worker():
    s = one_node()
    p, (c1,) = parent_with_children(s, ("c1",))
    assert s.handle(WorkerBlocked("w1", ("c1",))) == [Dispatch(c1, "w1", "n1", True)]
    assert s.task_state("c1") == RUNNING and s.worker_task("w1") == "c1"
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}  # the child took what p gave back
    # Done: p is on top again; all it waits for is done, so it keeps its CPU for the moment
    # until its get returns (no worker is started for that moment).
    assert s.handle(TaskFinished("c1", "w1")) == [Publish("c1", (ret("c1"),))]
    assert s.worker_task("w1") == "p"
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    assert s.handle(WorkerUnblocked("w1")) == []
    assert s.handle(TaskFinished("p", "w1")) == [Publish("p", (ret("p"),))]
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}
    assert s.worker_task("w1") is None


def test_children_with_a_known_tiny_run_time_go_together_and_run_in_order():
    s = Scheduler(adaptive_pipelining=True)
    from orion.scheduler import NodeJoined, WorkerJoined
    s.handle(NodeJoined("n1", {"CPU": 1.0}, base_workers=1, pipeline=16))
    s.handle(WorkerJoined("w1", "n1"))
    warm = spec("warm", name="child")
    s.handle(TaskSubmitted(warm))
    s.handle(TaskFinished("warm", "w1", duration=1e-5))  # "child" runs ~10 µs
    # A first "parent" waited in get: nothing is queued behind its kind any more.
    s.handle(TaskSubmitted(spec("p0", name="parent")))
    s.handle(WorkerBlocked("w1"))
    s.handle(WorkerUnblocked("w1"))
    s.handle(TaskFinished("p0", "w1"))
    p, (c1, c2, c3) = parent_with_children(s, ("c1", "c2", "c3"))
    assert [s.task_state(c) for c in ("c1", "c2", "c3")] == ["ready"] * 3
    assert s.handle(WorkerBlocked("w1", ("c1", "c2", "c3"))) == [
        Dispatch(c1, "w1", "n1", True), Dispatch(c2, "w1", "n1", True), Dispatch(c3, "w1", "n1", True)]
    assert [s.task_state(c) for c in ("c1", "c2", "c3")] == [RUNNING, ASSIGNED, ASSIGNED]
    assert [s.task_state(c) for c in ("c1", "c2", "c3")] == [RUNNING, ASSIGNED, ASSIGNED]
    s.handle(TaskFinished("c1", "w1"))
    assert s.worker_task("w1") == "c2" and s.task_state("c2") == RUNNING
    s.handle(TaskFinished("c2", "w1"))
    assert s.worker_task("w1") == "c3"
    s.handle(TaskFinished("c3", "w1"))
    assert s.worker_task("w1") == "p"
    s.handle(WorkerUnblocked("w1"))
    s.handle(TaskFinished("p", "w1"))
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}


def test_only_tasks_it_waits_for_that_fit_in_what_it_gave_back():
    s = one_node(cpus=4.0)
    p = spec("p")
    submit(s, p)
    big = nested("big", demand={"CPU": 2.0})
    other = nested("other")
    s.handle(TaskSubmitted(big))
    s.handle(TaskSubmitted(other))
    # (w1 is the only worker: both wait; "other" is not waited for, "big" needs more than p had)
    out = s.handle(WorkerBlocked("w1", ("big",)))
    assert all(not (type(c) is Dispatch and c.nested) for c in out)
    assert s.worker_task("w1") == "p"


def test_children_run_elsewhere_when_not_ready_and_the_resources_are_lent_as_before():
    s = one_node()
    p = spec("p")
    submit(s, p)
    c = nested("c", deps=["missing.r"])  # never ready here
    s.handle(TaskSubmitted(spec("missing")))
    s.handle(TaskSubmitted(c))
    assert kinds(s.handle(WorkerBlocked("w1", ("c",)))) == ["StartWorker"]


def test_a_child_that_blocks_gets_helped_one_level_deeper():
    s = one_node()
    p, (c,) = parent_with_children(s, ("c",))
    s.handle(WorkerBlocked("w1", ("c",)))
    g = nested("g")
    s.handle(TaskSubmitted(g))
    assert s.handle(WorkerBlocked("w1", ("g",))) == [Dispatch(g, "w1", "n1", True)]
    s.handle(TaskFinished("g", "w1"))
    assert s.worker_task("w1") == "c"
    s.handle(WorkerUnblocked("w1"))
    s.handle(TaskFinished("c", "w1"))
    assert s.worker_task("w1") == "p"
    s.handle(WorkerUnblocked("w1"))
    s.handle(TaskFinished("p", "w1"))
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}
    assert node_info(s, "n1")["running"] == 0


def test_nesting_stops_at_the_limit():
    s = one_node()
    submit(s, spec("t0"))
    for depth in range(1, MAX_NESTING + 2):
        child = nested(f"t{depth}")
        s.handle(TaskSubmitted(child))
        out = s.handle(WorkerBlocked("w1", (f"t{depth}",)))
        if depth <= MAX_NESTING:
            assert out == [Dispatch(child, "w1", "n1", True)]
        else:
            assert kinds(out) == ["StartWorker"]  # too deep: lend the resources as before


def test_worker_lost_while_helping_retries_the_child_and_the_suspended_parent():
    s = one_node()
    p, (c1, c2) = parent_with_children(s)
    s.handle(WorkerBlocked("w1", ("c1", "c2")))
    out = s.handle(WorkerLost("w1", "crashed"))
    assert {c.task_id for c in out if type(c) is Retry} == {"p", "c1"}
    assert node_info(s, "n1")["running"] == 0


def test_suspended_parent_that_ends_first_leaves_the_child_running():
    """The parent's get was interrupted: it ends while the child it waited for
    still runs on the worker; the child's end then frees the worker."""
    s = one_node()
    p, (c1,) = parent_with_children(s, ("c1",))
    s.handle(WorkerBlocked("w1", ("c1",)))
    assert s.handle(CancelRequested("p")) == [InterruptTask("p", "w1", False)]
    s.handle(TaskErrored("p", "w1", Failure("cancelled", "x"), retryable=False, cancelled=True))
    assert s.task_state("p") is None and s.worker_task("w1") == "c1"
    s.handle(TaskFinished("c1", "w1"))
    assert s.worker_task("w1") is None
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}


def test_a_queued_task_sent_back_after_its_worker_blocked_and_helped_is_requeued():
    """A task pipelined behind p arrives after p blocked (so the worker sends it
    back) and after the scheduler moved p's queue to a suspended level."""
    s = Scheduler()
    from orion.scheduler import NodeJoined, WorkerJoined
    s.handle(NodeJoined("n1", {"CPU": 1.0}, base_workers=1, pipeline=16))
    s.handle(WorkerJoined("w1", "n1"))
    s.handle(TaskSubmitted(spec("p")))
    c1, c2 = nested("c1"), nested("c2")
    s.handle(TaskSubmitted(c1))
    out = s.handle(TaskSubmitted(c2))
    queued = [c.spec.task_id for c in out if type(c) is Dispatch]
    s.handle(WorkerBlocked("w1", ("c1", "c2")))
    for task_id in queued:
        s.handle(TaskRejected(task_id, "w1"))
    # Everything completes and the accounting ends where it began.
    for _ in range(4):
        top = s.worker_task("w1")
        if top == "p":
            break
        s.handle(TaskFinished(top, "w1"))
    assert s.worker_task("w1") == "p"
    s.handle(WorkerUnblocked("w1"))
    s.handle(TaskFinished("p", "w1"))
    assert s.counts() == {"pending": 0, "ready": 0, "running": 0, "assigned": 0}
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}


def test_a_resubmitted_task_makes_workers_that_kept_their_resources_lend_them():
    s = one_node()
    p, (c1,) = parent_with_children(s, ("c1",))
    s.handle(WorkerBlocked("w1", ("c1",)))
    s.handle(TaskFinished("c1", "w1"))  # p kept its CPU: all it waits for is done
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    # c1's value was lost and c1 runs again: p may wait for it, so it lends its CPU out.
    out = s.handle(TaskSubmitted(nested("c1")))
    assert kinds(out) == ["StartWorker"]
    s.handle(WorkerUnblocked("w1"))
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}


@pytest.mark.timeout(20)
def test_a_get_on_many_tasks_costs_no_quadratic_scan():
    """A task waiting for 50,000 children is helped through all of them; each
    help looks at a window of what it waits for, and finished ones are
    dropped from the front (a scan of the whole list each time would take
    minutes here)."""
    s = one_node()
    submit(s, spec("p"))
    children = [f"c{i}" for i in range(50_000)]
    for c in children:
        s.handle(TaskSubmitted(nested(c)))
    out = s.handle(WorkerBlocked("w1", tuple(children)))
    ran = 0
    while out:
        (d,) = [c for c in out if type(c) is Dispatch]
        ran += 1
        out = [c for c in s.handle(TaskFinished(d.spec.task_id, "w1")) if type(c) is Dispatch]
    assert ran == len(children)
    assert s.worker_task("w1") == "p"
