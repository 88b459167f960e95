"""Extra workers for resources lent by blocked workers, with
``Scheduler(extra_worker_delay=...)``: a worker blocked in get lends its
resources at once (an idle worker may use them), but its node asks for an
extra worker process only once the worker has been blocked that long. Time
comes in events (``WorkerBlocked.at``, ``Tick.now``); ``next_deadline`` says
when the runtime should feed the next ``Tick``."""
from __future__ import annotations

import pytest

from orion.scheduler import (Dispatch, NodeJoined, Scheduler, StartWorker, TaskFinished, TaskSubmitted, Tick,
                             WorkerBlocked, WorkerJoined, WorkerUnblocked)

from test_scheduler import kinds, spec, submit

pytestmark = pytest.mark.timeout(10)

DELAY = 0.05


def one_node(delay=DELAY, workers=("w1",), cpus=1.0):
    s = Scheduler(extra_worker_delay=delay)
    s.handle(NodeJoined("n1", {"CPU": cpus}, base_workers=len(workers)))
    for worker_id in workers:
        s.handle(WorkerJoined(worker_id, "n1"))
    return s


def blocked_parent_and_queued_task(s, at=10.0):
    """w1 runs p, which waits in get (for nothing it could run itself); q is queued."""
    p, q = spec("p"), spec("q")
    assert submit(s, p) == [Dispatch(p, "w1", "n1")]
    assert submit(s, q) == []
    return s.handle(WorkerBlocked("w1", (), at))


def test_no_extra_worker_before_the_delay_then_one_at_the_tick():
    s = one_node()
    assert blocked_parent_and_queued_task(s, at=10.0) == []
    assert s.next_deadline() == pytest.approx(10.0 + DELAY)
    assert s.handle(Tick(10.0 + DELAY / 2)) == []
    assert s.handle(Tick(10.0 + DELAY)) == [StartWorker("n1")]
    assert s.next_deadline() is None
    # The new worker takes the queued task.
    out = s.handle(WorkerJoined("w2", "n1"))
    assert [(type(c), c.spec.task_id) for c in out] == [(Dispatch, "q")]


def test_a_get_that_ends_before_the_delay_starts_no_worker():
    s = one_node()
    blocked_parent_and_queued_task(s, at=10.0)
    assert s.handle(WorkerUnblocked("w1")) == []
    assert s.next_deadline() is None  # nothing to wait for any more
    assert s.handle(Tick(11.0)) == []
    # p ends; q runs on w1 as usual.
    out = s.handle(TaskFinished("p", "w1"))
    assert [type(c).__name__ for c in out if type(c) is Dispatch] == ["Dispatch"]


def test_an_idle_worker_uses_lent_resources_at_once():
    # Two workers, one CPU: w2 idles for lack of CPU until w1's task blocks.
    s = one_node(workers=("w1", "w2"))
    p, q = spec("p"), spec("q")
    (dispatch,) = submit(s, p)
    assert submit(s, q) == []
    out = s.handle(WorkerBlocked(dispatch.worker_id, (), 10.0))
    other = ({"w1", "w2"} - {dispatch.worker_id}).pop()
    assert [(type(c), c.spec.task_id, c.worker_id) for c in out] == [(Dispatch, "q", other)]


def test_a_later_block_of_the_same_worker_waits_afresh():
    s = one_node()
    blocked_parent_and_queued_task(s, at=10.0)
    s.handle(WorkerUnblocked("w1"))
    assert s.handle(WorkerBlocked("w1", (), 20.0)) == []
    assert s.handle(Tick(10.0 + DELAY)) == []  # the first block's time has no say
    assert s.next_deadline() == pytest.approx(20.0 + DELAY)
    assert s.handle(Tick(20.0 + DELAY)) == [StartWorker("n1")]


def test_without_a_delay_the_extra_worker_is_asked_for_at_once():
    s = one_node(delay=0.0)
    assert kinds(blocked_parent_and_queued_task(s, at=10.0)) == ["StartWorker"]
    assert s.next_deadline() is None
