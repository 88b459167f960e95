"""Unit tests for the scheduler's side of the distributed object store.

* ``ObjectLocated``: placement (least_loaded) sends a task to the candidate
  node holding the most bytes of its inputs; ties and zero bytes leave the
  choice to the policy; round_robin ignores locality; ``NodeLost``, node
  re-registration and release forget locations.
* ``ObjectLost``: with no failure, consumers not dispatched yet wait while the
  owner re-submits the producer (lineage reconstruction, recursively); with a
  failure, they fail, with their dependents.
* ``InputLost``: a worker that could not fetch an input gives the task back
  unstarted (RUNNING or ASSIGNED): no retry used, and the task waits, is
  queued again at the front, or fails, as its input is.

Each test drives ``Scheduler.handle`` one event at a time and asserts the exact
list of commands each event returns.
"""
from __future__ import annotations

import pytest

from orion.scheduler import (ASSIGNED, FAILED, PENDING, READY, RUNNING, CancelRequested, Dispatch, FailTask,
                             Failure, InputLost, InterruptTask, NodeJoined, NodeLost, ObjectLocated, ObjectLost,
                             ObjectPut, ObjectsReleased, Publish, ReleaseObject, Retry, Scheduler, StartWorker,
                             TaskErrored, TaskFinished, TaskSpec, TaskSubmitted, WorkerJoined, WorkerLost)

pytestmark = pytest.mark.timeout(10)

MB = 1 << 20
GONE = Failure("object_lost", "object x was lost with node n0 and cannot be rebuilt")


# ------------------------------------------------------------------ helpers
def spec(task_id, deps=(), demand=None, max_retries=3):
    return TaskSpec(task_id, (ret(task_id),), tuple(deps), {"CPU": 1.0} if demand is None else demand,
                    max_retries, payload=("payload", task_id))


def ret(task_id):
    return f"{task_id}.r"


def make(nodes, policy="least_loaded"):
    """A scheduler with ``nodes``: {node_id: (cpus, [worker ids])} or
    {node_id: (cpus, [worker ids], pipeline)}."""
    s = Scheduler(policy)
    for node_id, (cpus, workers, *pipeline) in nodes.items():
        assert s.handle(NodeJoined(node_id, {"CPU": float(cpus)}, base_workers=len(workers),
                                   pipeline=bool(pipeline and pipeline[0]))) == []
        for worker_id in workers:
            assert s.handle(WorkerJoined(worker_id, node_id)) == []
    return s


def three_nodes(policy="least_loaded"):
    return make({"n1": (2, ["a1", "a2"]), "n2": (2, ["b1", "b2"]), "n3": (2, ["c1", "c2"])}, policy)


def submit(s, sp):
    return s.handle(TaskSubmitted(sp))


def put(s, object_id, *where, size=MB):
    """A put object with copies on the nodes ``where``."""
    assert s.handle(ObjectPut(object_id)) == []
    for node_id in where:
        assert s.handle(ObjectLocated(object_id, node_id, size)) == []


def run_and_finish(s, sp, worker_id, node_id, size=MB):
    """Run ``sp`` on ``worker_id`` and store its result there (a large object)."""
    assert submit(s, sp) == [Dispatch(sp, worker_id, node_id)]
    assert s.handle(TaskFinished(sp.task_id, worker_id)) == [Publish(sp.task_id, sp.return_ids)]
    for return_id in sp.return_ids:
        assert s.handle(ObjectLocated(return_id, node_id, size)) == []


def counts(pending=0, ready=0, running=0, assigned=0):
    return {PENDING: pending, READY: ready, RUNNING: running, ASSIGNED: assigned}


# ---------------------------------------------------------------- locality
def test_task_goes_to_the_node_holding_most_input_bytes():
    s = three_nodes()
    put(s, "x", "n1", size=100 * MB)
    put(s, "y", "n2", size=300 * MB)
    c = spec("c", deps=["x", "y"])
    # Without locality least_loaded would take n1 (all equally free: the first).
    assert submit(s, c) == [Dispatch(c, "b2", "n2")]


def test_copies_on_several_nodes_add_up_per_node():
    s = three_nodes()
    put(s, "x", "n1", "n3", size=100 * MB)
    put(s, "y", "n2", size=150 * MB)
    put(s, "z", "n3", size=60 * MB)
    assert s.object_locations("x") == ["n1", "n3"]
    assert s.object_size("x") == 100 * MB
    c = spec("c", deps=["x", "y", "z"])
    assert submit(s, c) == [Dispatch(c, "c2", "n3")]  # n3 holds 160 MB, n2 150, n1 100


def test_an_input_named_twice_counts_once():
    s = three_nodes()
    put(s, "x", "n1", size=100 * MB)
    put(s, "y", "n2", size=150 * MB)
    c = spec("c", deps=["x", "x", "y"])
    assert submit(s, c) == [Dispatch(c, "b2", "n2")]


def test_busy_holder_falls_back_to_the_policy():
    s = make({"n1": (1, ["a1"]), "n2": (1, ["b1"]), "n3": (2, ["c1", "c2"])})
    put(s, "x", "n1", size=100 * MB)
    busy = spec("busy", demand={"CPU": 1.0})
    # Locality does not apply to a task without located inputs: least_loaded
    # takes the first of the equally free nodes.
    assert submit(s, busy) == [Dispatch(busy, "a1", "n1")]
    c = spec("c", deps=["x"])
    # n1 (the holder) is full: among n2 and n3, least_loaded ties -> n2.
    assert submit(s, c) == [Dispatch(c, "b1", "n2")]


def test_holder_without_enough_free_resources_is_no_candidate():
    s = make({"n1": (2, ["a1", "a2"]), "n2": (2, ["b1", "b2"])})
    put(s, "x", "n1", size=100 * MB)
    half = spec("half", demand={"CPU": 1.5})
    assert submit(s, half) == [Dispatch(half, "a2", "n1")]  # no located input: least_loaded -> n1
    c = spec("c", deps=["x"])
    assert submit(s, c) == [Dispatch(c, "b2", "n2")]


def test_tie_between_holders_is_broken_by_the_policy():
    s = three_nodes()
    busy = spec("busy")
    assert submit(s, busy) == [Dispatch(busy, "a2", "n1")]  # n1 now half used
    put(s, "x", "n1", size=100 * MB)
    put(s, "y", "n3", size=100 * MB)
    c = spec("c", deps=["x", "y"])
    # n1 and n3 hold 100 MB each; least_loaded among them prefers n3 (all free).
    # (Over every candidate it would take n2.)
    assert submit(s, c) == [Dispatch(c, "c2", "n3")]


def test_inputs_without_located_copies_leave_placement_to_the_policy():
    s = three_nodes()
    put(s, "x", "n3", size=100 * MB)  # located, but no input of the tasks below
    assert s.handle(ObjectPut("small")) == []  # never located: a small object
    a = spec("a", deps=["small"])
    assert submit(s, a) == [Dispatch(a, "a2", "n1")]
    b = spec("b")
    assert submit(s, b) == [Dispatch(b, "b2", "n2")]


def test_zero_byte_inputs_leave_placement_to_the_policy():
    s = three_nodes()
    put(s, "x", "n3", size=0)
    c = spec("c", deps=["x"])
    assert submit(s, c) == [Dispatch(c, "a2", "n1")]


def test_round_robin_ignores_locality():
    s = make({"n1": (4, ["a1", "a2"]), "n2": (4, ["b1", "b2"])}, policy="round_robin")
    put(s, "x", "n1", size=100 * MB)
    c, d = spec("c", deps=["x"]), spec("d", deps=["x"])
    assert submit(s, c) == [Dispatch(c, "b2", "n2")]
    assert submit(s, d) == [Dispatch(d, "a2", "n1")]


def test_locality_follows_results_of_tasks():
    s = make({"n1": (1, ["a1"]), "n2": (1, ["b1"])})
    a = spec("a")
    run_and_finish(s, a, "a1", "n1")
    assert s.handle(ObjectLocated(ret("a"), "n2", MB)) == []  # copied to n2 (by a fetch)
    assert s.handle(NodeJoined("n3", {"CPU": 8.0}, base_workers=1)) == []
    assert s.handle(WorkerJoined("c1", "n3")) == []
    b1, b2, b3 = (spec(t, deps=[ret("a")]) for t in ("b1", "b2", "b3"))
    assert submit(s, b1) == [Dispatch(b1, "a1", "n1")]  # holders tie: the first
    assert submit(s, b2) == [Dispatch(b2, "b1", "n2")]  # the other holder
    assert submit(s, b3) == [Dispatch(b3, "c1", "n3")]  # both holders full


def test_node_lost_forgets_its_copies():
    s = make({"n1": (1, ["a1"]), "n2": (1, ["b1"])})
    put(s, "x", "n2", "n1", size=100 * MB)
    put(s, "y", "n2", size=10 * MB)
    assert s.object_locations("x") == ["n2", "n1"]
    assert s.handle(NodeLost("n2")) == []
    assert s.object_locations("x") == ["n1"] and s.object_locations("y") == []
    assert s.object_status("y") == READY  # whether it is lost is the owner's word (ObjectLost)
    # A late report from the dead node is ignored.
    assert s.handle(ObjectLocated("y", "n2", 10 * MB)) == []
    assert s.object_locations("y") == []
    # n2 comes back empty: y's old copy does not draw tasks there.
    assert s.handle(NodeJoined("n2", {"CPU": 1.0}, base_workers=1)) == []
    assert s.handle(WorkerJoined("b1", "n2")) == []
    c = spec("c", deps=["x", "y"])
    assert submit(s, c) == [Dispatch(c, "a1", "n1")]


def test_node_lost_forgets_copies_of_objects_with_no_other():
    s = make({"n1": (1, ["a1"]), "n2": (1, ["b1"])})
    put(s, "x", "n2", size=100 * MB)
    assert s.handle(NodeLost("n2")) == []
    assert s.handle(NodeJoined("n2", {"CPU": 1.0}, base_workers=1)) == []
    assert s.handle(WorkerJoined("b1", "n2")) == []
    c = spec("c", deps=["x"])
    assert submit(s, c) == [Dispatch(c, "a1", "n1")]  # policy's choice: x has no copy now


def test_node_reregistering_forgets_its_copies():
    s = make({"n1": (1, ["a1"]), "n2": (1, ["b1"])})
    put(s, "x", "n2", size=100 * MB)
    assert s.handle(NodeJoined("n2", {"CPU": 1.0}, base_workers=1)) == []
    assert s.object_locations("x") == []


def test_located_reports_for_unknown_objects_or_nodes_are_ignored():
    s = make({"n1": (1, ["a1"])})
    assert s.handle(ObjectLocated("nope", "n1", MB)) == []
    assert s.object_locations("nope") == [] and s.object_size("nope") is None
    put(s, "x")
    assert s.object_size("x") == 0  # never located
    assert s.handle(ObjectLocated("x", "nowhere", MB)) == []
    assert s.object_locations("x") == []
    # The same copy reported twice is one location.
    assert s.handle(ObjectLocated("x", "n1", MB)) == []
    assert s.handle(ObjectLocated("x", "n1", MB)) == []
    assert s.object_locations("x") == ["n1"]


def test_released_object_forgets_its_copies():
    s = make({"n1": (1, ["a1"]), "n2": (1, ["b1"])})
    put(s, "x", "n2", size=100 * MB)
    assert s.handle(ObjectsReleased(("x",))) == [ReleaseObject("x")]
    assert s.object_locations("x") == [] and s.object_size("x") is None
    # A late report does not bring it back.
    assert s.handle(ObjectLocated("x", "n2", MB)) == []
    assert s.object_status("x") is None
    # Losing the node afterwards does not trip over the freed object.
    assert s.handle(NodeLost("n2")) == []
    c = spec("c")
    assert submit(s, c) == [Dispatch(c, "a1", "n1")]


def test_pending_result_may_be_located_before_its_task_is_published():
    s = make({"n1": (1, ["a1"]), "n2": (1, ["b1"])})
    a = spec("a")
    assert submit(s, a) == [Dispatch(a, "a1", "n1")]
    assert s.handle(ObjectLocated(ret("a"), "n1", MB)) == []
    assert s.handle(TaskFinished("a", "a1")) == [Publish("a", (ret("a"),))]
    assert s.object_locations(ret("a")) == ["n1"]


# ------------------------------------------------ ObjectLost: reconstruction
def lost_node_cluster():
    """n0 ran ``a`` and holds its result, then died; n1 (one worker, w1) is
    busy with ``busy``. Returns the scheduler and a's spec."""
    s = make({"n0": (1, ["w0"]), "n1": (1, ["w1"])})
    a = spec("a")
    run_and_finish(s, a, "w0", "n0")
    assert s.handle(NodeLost("n0")) == []
    busy = spec("busy")
    assert submit(s, busy) == [Dispatch(busy, "w1", "n1")]
    return s, a


def test_lost_object_is_rebuilt_and_queued_consumer_waits_for_it():
    s, a = lost_node_cluster()
    b = spec("b", deps=[ret("a")])
    assert submit(s, b) == []  # the owner has not noticed the loss yet
    assert s.task_state("b") == READY
    assert s.handle(ObjectLost(ret("a"))) == []
    assert s.object_status(ret("a")) == PENDING and s.task_state("b") == PENDING
    # The owner re-submits the producer (a finished task: it runs again).
    assert submit(s, a) == []
    assert s.counts() == counts(pending=1, ready=1, running=1)
    assert s.handle(TaskFinished("busy", "w1")) == [Publish("busy", (ret("busy"),)), Dispatch(a, "w1", "n1")]
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),))]
    assert s.counts() == counts()


def test_rebuild_makes_pending_consumers_wait_too_and_counts_repeated_inputs():
    s, a = lost_node_cluster()
    y = spec("y")
    c = spec("c", deps=[ret("a"), ret("y"), ret("a")])
    assert submit(s, y) == []  # queued behind busy
    assert submit(s, c) == []
    assert s.task_state("c") == PENDING  # waits for y
    assert s.handle(ObjectLost(ret("a"))) == []
    assert submit(s, a) == []
    assert s.handle(TaskFinished("busy", "w1")) == [Publish("busy", (ret("busy"),)), Dispatch(y, "w1", "n1")]
    # y alone is not enough any more: c waits for the rebuilt a.r too.
    assert s.handle(TaskFinished("y", "w1")) == [Publish("y", (ret("y"),)), Dispatch(a, "w1", "n1")]
    assert s.task_state("c") == PENDING
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(c, "w1", "n1")]


def test_rebuild_does_not_touch_dispatched_consumers():
    s = make({"n0": (1, ["w0"]), "n1": (1, ["w1"])})
    a = spec("a")
    run_and_finish(s, a, "w0", "n0")
    b = spec("b", deps=[ret("a")])
    assert submit(s, b) == [Dispatch(b, "w0", "n0")]  # locality: where a.r is
    assert s.handle(ObjectLocated(ret("a"), "n1", MB)) == []
    assert s.handle(NodeLost("n0")) == [Retry("b", 2, "node n0 lost (node lost) while worker w0 ran it"),
                                        Dispatch(b, "w1", "n1")]
    assert s.object_locations(ret("a")) == ["n1"]
    # Later n1's copy goes too (say, evicted): b is running, it is not touched.
    assert s.handle(ObjectLost(ret("a"))) == []
    assert s.task_state("b") == RUNNING


@pytest.mark.parametrize("order", ["losses_first", "interleaved"])
def test_recursive_loss_rebuilds_the_chain_in_order(order):
    # a -> b -> c; a.r and b.r both lived on n0, which died.
    s = make({"n0": (1, ["w0"]), "n1": (1, ["w1"])})
    a, b = spec("a"), spec("b", deps=[ret("a")])
    run_and_finish(s, a, "w0", "n0")
    run_and_finish(s, b, "w0", "n0")
    assert s.handle(NodeLost("n0")) == []
    busy = spec("busy")
    assert submit(s, busy) == [Dispatch(busy, "w1", "n1")]
    c = spec("c", deps=[ret("b")])
    assert submit(s, c) == []
    if order == "losses_first":
        events = [ObjectLost(ret("b")), ObjectLost(ret("a")), TaskSubmitted(b), TaskSubmitted(a)]
    else:
        # b is re-submitted while a.r still looks ready: it queues, then waits.
        events = [ObjectLost(ret("b")), TaskSubmitted(b), ObjectLost(ret("a")), TaskSubmitted(a)]
    for event in events:
        assert s.handle(event) == []
    assert (s.task_state("a"), s.task_state("b"), s.task_state("c")) == (READY, PENDING, PENDING)
    assert s.handle(TaskFinished("busy", "w1")) == [Publish("busy", (ret("busy"),)), Dispatch(a, "w1", "n1")]
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),)), Dispatch(c, "w1", "n1")]
    assert s.handle(TaskFinished("c", "w1")) == [Publish("c", (ret("c"),))]
    assert s.counts() == counts()


def test_object_lost_is_ignored_unless_the_object_is_ready():
    s = make({"n1": (1, ["w1"])})
    a = spec("a")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    b = spec("b", deps=[ret("a")])
    assert submit(s, b) == []
    assert s.handle(ObjectLost(ret("a"))) == []  # pending: nothing to lose
    assert s.handle(ObjectLost(ret("a"), GONE)) == []
    assert s.handle(ObjectLost("unknown")) == []
    assert s.object_status(ret("a")) == PENDING and s.task_state("b") == PENDING
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]
    put(s, "x")
    assert s.handle(ObjectLost("x", GONE)) == []
    assert s.handle(ObjectLost("x")) == []  # failed: stays failed
    assert s.object_status("x") == FAILED


def test_released_object_is_released_once_its_rebuilt_value_has_no_consumer():
    s, a = lost_node_cluster()
    b = spec("b", deps=[ret("a")])
    assert submit(s, b) == []
    assert s.handle(ObjectsReleased((ret("a"),))) == []  # b still needs it
    assert s.handle(ObjectLost(ret("a"))) == []
    assert submit(s, a) == []
    assert s.handle(TaskFinished("busy", "w1")) == [Publish("busy", (ret("busy"),)), Dispatch(a, "w1", "n1")]
    assert s.handle(ObjectLocated(ret("a"), "n1", MB)) == []
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),)), ReleaseObject(ret("a"))]
    assert s.object_status(ret("a")) is None and s.object_locations(ret("a")) == []


def test_released_object_lost_with_no_pending_consumer_is_released_after_its_rebuild():
    s, a = lost_node_cluster()
    b = spec("b", deps=[ret("a")])
    assert submit(s, b) == []
    assert s.handle(ObjectLost(ret("a"))) == []
    assert submit(s, a) == []
    assert s.handle(CancelRequested("b")) == [FailTask("b", (ret("b"),),
                                                       Failure("cancelled", "task b was cancelled"))]
    assert s.handle(ObjectsReleased((ret("a"),))) == []  # pending: its producer runs again
    assert s.handle(TaskFinished("busy", "w1")) == [Publish("busy", (ret("busy"),)), Dispatch(a, "w1", "n1")]
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), ReleaseObject(ret("a"))]


# ---------------------------------------------- ObjectLost: no lineage (fail)
def test_unrecoverable_loss_fails_queued_consumers_and_their_dependents():
    s = make({"n0": (1, ["w0"]), "n1": (1, ["w1"])})
    put(s, "x", "n0")
    r = spec("r", deps=["x"])
    assert submit(s, r) == [Dispatch(r, "w0", "n0")]  # runs, and keeps running
    y = spec("y")
    assert submit(s, y) == [Dispatch(y, "w1", "n1")]
    b = spec("b", deps=["x"])  # queued
    c = spec("c", deps=[ret("b")])  # waits for b
    d = spec("d", deps=[ret("y"), "x"])  # waits for y
    e = spec("e", deps=[ret("y")])  # does not need x
    for sp in (b, c, d, e):
        assert submit(s, sp) == []
    assert s.handle(ObjectsReleased(("x",))) == []
    assert s.handle(ObjectLost("x", GONE)) == [FailTask("b", (ret("b"),), GONE), FailTask("c", (ret("c"),), GONE),
                                               FailTask("d", (ret("d"),), GONE)]
    assert s.object_status("x") == FAILED and s.object_locations("x") == []
    assert s.task_state("r") == RUNNING and s.task_state("e") == PENDING
    # A later consumer fails at once.
    (fail,) = submit(s, spec("f", deps=["x"]))
    assert fail.failure is GONE
    # r's worker cannot fetch x: r fails too, and x, released, has no consumer left.
    assert s.handle(InputLost("r", "w0", "x")) == [FailTask("r", (ret("r"),), GONE), ReleaseObject("x")]
    assert s.handle(TaskFinished("y", "w1")) == [Publish("y", (ret("y"),)), Dispatch(e, "w0", "n0")]


def test_unrecoverable_loss_of_a_released_object_without_consumers_releases_it():
    s = make({"n1": (1, ["w1"])})
    put(s, "x", "n1")
    r = spec("r", deps=["x"])
    assert submit(s, r) == [Dispatch(r, "w1", "n1")]
    assert s.handle(ObjectsReleased(("x",))) == []
    assert s.handle(ObjectLost("x", GONE)) == []  # r runs: x is kept for its report
    assert s.handle(TaskFinished("r", "w1")) == [Publish("r", (ret("r"),)), ReleaseObject("x")]


# --------------------------------------------------------------- InputLost
def test_input_lost_while_running_waits_for_the_rebuild_without_a_retry():
    s = make({"n0": (1, ["w0"]), "n1": (1, ["w1"])})
    a = spec("a")
    run_and_finish(s, a, "w0", "n0")
    assert s.handle(NodeLost("n0")) == []
    r = spec("r", deps=[ret("a")], max_retries=1)
    assert submit(s, r) == [Dispatch(r, "w1", "n1")]
    assert s.handle(ObjectLost(ret("a"))) == []
    assert submit(s, a) == []  # queued: w1 is busy with r
    # r's worker cannot fetch a.r: w1 is free, the producer runs there.
    assert s.handle(InputLost("r", "w1", ret("a"))) == [Dispatch(a, "w1", "n1")]
    assert s.task_state("r") == PENDING
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(r, "w1", "n1")]
    # Its first dispatch did not count as an attempt, nor used its one retry.
    assert s.handle(WorkerLost("w1")) == [Retry("r", 2, "worker w1 on node n1 died: worker died"),
                                          StartWorker("n1")]


def test_input_lost_while_running_with_a_ready_input_goes_back_to_the_front():
    s = make({"n1": (1, ["w1"])})
    put(s, "x", "n1")
    r, q = spec("r", deps=["x"]), spec("q")
    assert submit(s, r) == [Dispatch(r, "w1", "n1")]
    assert submit(s, q) == []
    # A passing fetch failure (the copy is still there): r is next again.
    assert s.handle(InputLost("r", "w1", "x")) == [Dispatch(r, "w1", "n1")]
    assert s.handle(TaskFinished("r", "w1")) == [Publish("r", (ret("r"),)), Dispatch(q, "w1", "n1")]


def test_input_lost_while_running_with_a_failed_input_fails_the_task_and_dependents():
    s = make({"n1": (1, ["w1"])})
    put(s, "x", "n1")
    r, q = spec("r", deps=["x"]), spec("q")
    assert submit(s, r) == [Dispatch(r, "w1", "n1")]
    d = spec("d", deps=[ret("r")])
    assert submit(s, d) == []
    assert submit(s, q) == []
    assert s.handle(ObjectLost("x", GONE)) == []
    assert s.handle(InputLost("r", "w1", "x")) == [FailTask("r", (ret("r"),), GONE),
                                                    FailTask("d", (ret("d"),), GONE), Dispatch(q, "w1", "n1")]
    assert s.nodes()[0]["available"] == {"CPU": 0.0} and s.nodes()[0]["running"] == 1


def test_input_lost_for_an_assigned_task():
    # One pipelining worker: a runs, b (needing x) is queued behind it.
    s = make({"n1": (1, ["w1"], True)})
    put(s, "x", "n1")
    a, b, c = spec("a"), spec("b", deps=["x"]), spec("c")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == []
    assert submit(s, c) == [Dispatch(b, "w1", "n1")]
    assert s.task_state("b") == ASSIGNED
    # The worker could not prefetch x, which is still ready: b is queued at the
    # front again, and with a backlog of two it goes behind a again.
    assert s.handle(InputLost("b", "w1", "x")) == [Dispatch(b, "w1", "n1")]
    assert s.task_state("b") == ASSIGNED and s.worker_task("w1") == "a"
    # Now x is gone for good: b fails, c takes its place behind a.
    assert s.handle(ObjectLost("x", GONE)) == []  # b is assigned: not touched
    assert s.handle(InputLost("b", "w1", "x")) == [FailTask("b", (ret("b"),), GONE)]
    assert s.counts() == counts(ready=1, running=1)
    assert s.nodes()[0]["available"] == {"CPU": 0.0} and s.nodes()[0]["running"] == 1
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(c, "w1", "n1")]


def test_input_lost_for_an_assigned_task_whose_input_is_rebuilt():
    s = make({"n0": (1, ["w0"]), "n1": (1, ["w1"], True)})
    p = spec("p")
    run_and_finish(s, p, "w0", "n0")
    assert s.handle(NodeLost("n0")) == []
    a, b, c = spec("a"), spec("b", deps=[ret("p")]), spec("c")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == []
    assert submit(s, c) == [Dispatch(b, "w1", "n1")]
    assert s.handle(ObjectLost(ret("p"))) == []
    assert submit(s, p) == []
    # b waits for p; the backlog (c, p) of two goes behind a: c first.
    assert s.handle(InputLost("b", "w1", ret("p"))) == [Dispatch(c, "w1", "n1")]
    assert s.task_state("b") == PENDING
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]  # c starts
    assert s.handle(TaskFinished("c", "w1")) == [Publish("c", (ret("c"),)), Dispatch(p, "w1", "n1")]
    assert s.handle(TaskFinished("p", "w1")) == [Publish("p", (ret("p"),)), Dispatch(b, "w1", "n1")]


def test_input_lost_after_a_cancel_ends_the_task_cancelled():
    s = make({"n1": (1, ["w1"])})
    put(s, "x", "n1")
    r = spec("r", deps=["x"])
    assert submit(s, r) == [Dispatch(r, "w1", "n1")]
    assert s.handle(CancelRequested("r")) == [InterruptTask("r", "w1", False)]
    assert s.handle(InputLost("r", "w1", "x")) == [FailTask("r", (ret("r"),),
                                                            Failure("cancelled", "task r was cancelled"))]
    assert s.worker_task("w1") is None


def test_stale_input_lost_is_ignored():
    s = make({"n1": (2, ["w1", "w2"])})
    put(s, "x", "n1")
    r = spec("r", deps=["x"])
    assert submit(s, r) == [Dispatch(r, "w2", "n1")]
    assert s.handle(InputLost("r", "w1", "x")) == []  # not on that worker
    assert s.handle(InputLost("r", "nope", "x")) == []  # unknown worker
    assert s.handle(InputLost("r", "w2", "y")) == []  # not one of its inputs
    assert s.handle(InputLost("nope", "w2", "x")) == []  # unknown task
    assert s.task_state("r") == RUNNING
    assert s.handle(TaskFinished("r", "w2")) == [Publish("r", (ret("r"),))]
    assert s.handle(InputLost("r", "w2", "x")) == []  # already finished
    q = spec("q", deps=["x"])
    assert submit(s, q) == [Dispatch(q, "w2", "n1")]
    assert s.handle(WorkerLost("w2")) == [Retry("q", 2, "worker w2 on node n1 died: worker died"),
                                          Dispatch(q, "w1", "n1")]
    assert s.handle(InputLost("q", "w2", "x")) == []  # the old worker's report
    assert s.task_state("q") == RUNNING and s.worker_task("w1") == "q"


# ------------------------------------- dispatched consumers sent back later
def test_retried_consumer_waits_for_its_lost_input_instead_of_running():
    s = make({"n0": (1, ["w0"]), "n1": (2, ["w1", "w2"])})
    a = spec("a")
    run_and_finish(s, a, "w0", "n0")
    assert s.handle(NodeLost("n0")) == []
    b = spec("b", deps=[ret("a")])
    assert submit(s, b) == [Dispatch(b, "w2", "n1")]
    assert s.handle(ObjectLost(ret("a"))) == []
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    # b's worker dies: b is retried, but a.r is being rebuilt, so b waits.
    assert s.handle(WorkerLost("w2")) == [Retry("b", 2, "worker w2 on node n1 died: worker died")]
    assert s.task_state("b") == PENDING
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]


def test_retried_consumer_of_an_input_lost_for_good_fails_without_a_retry():
    s = make({"n1": (2, ["w1", "w2"])})
    put(s, "x", "n1")
    r = spec("r", deps=["x"])
    assert submit(s, r) == [Dispatch(r, "w2", "n1")]
    assert s.handle(ObjectLost("x", GONE)) == []
    assert s.handle(WorkerLost("w2")) == [FailTask("r", (ret("r"),), GONE)]
    failure = Failure("task_error", "boom")
    q = spec("q", deps=["x"])
    assert submit(s, q)[0].failure is GONE
    # The same through a retryable error.
    put(s, "y", "n1")
    u = spec("u", deps=["y"])
    assert submit(s, u) == [Dispatch(u, "w1", "n1")]
    assert s.handle(ObjectLost("y", GONE)) == []
    assert s.handle(TaskErrored("u", "w1", failure, retryable=True)) == [FailTask("u", (ret("u"),), GONE)]


def test_lost_workers_assigned_task_waits_for_its_lost_input():
    s = make({"n0": (1, ["w0"]), "n1": (1, ["w1"], True)})
    p = spec("p")
    run_and_finish(s, p, "w0", "n0")
    assert s.handle(NodeLost("n0")) == []
    a, b, c = spec("a"), spec("b", deps=[ret("p")]), spec("c")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == []
    assert submit(s, c) == [Dispatch(b, "w1", "n1")]
    assert s.handle(ObjectLost(ret("p"))) == []  # b is assigned: not touched yet
    assert submit(s, p) == []
    # w1 dies: a is retried; b, which never started, waits for p (no dispatch
    # only to fail fetching p.r).
    assert s.handle(WorkerLost("w1")) == [Retry("a", 2, "worker w1 on node n1 died: worker died"),
                                          StartWorker("n1")]
    assert s.task_state("b") == PENDING
    assert s.handle(WorkerJoined("w9", "n1")) == [Dispatch(c, "w9", "n1"), Dispatch(p, "w9", "n1")]
    assert s.handle(TaskFinished("c", "w9")) == [Publish("c", (ret("c"),))]  # p starts
    assert s.handle(TaskFinished("p", "w9")) == [Publish("p", (ret("p"),)), Dispatch(a, "w9", "n1")]
    assert s.task_state("b") == READY  # ready again, queued behind a
    assert s.handle(TaskFinished("a", "w9")) == [Publish("a", (ret("a"),)), Dispatch(b, "w9", "n1")]
