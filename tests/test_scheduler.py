"""Unit tests for the sans-I/O scheduler (orion.scheduler).

Each test drives ``Scheduler.handle`` one event at a time and asserts the exact
list of commands each event returns.
"""
from __future__ import annotations

import pytest

from orion.scheduler import (ASSIGNED, CANCELLED, FAILED, PENDING, READY, RUNNING, CancelRequested, Dispatch,
                             FailTask, Failure, InterruptTask, NodeJoined, NodeLost, ObjectLost, ObjectPut,
                             ObjectsReleased, Publish, ReleaseObject, Retry, Scheduler, StartWorker,
                             StopWorker, TaskErrored, TaskFinished, TaskSpec, TaskSubmitted,
                             WorkerBlocked, WorkerJoined, WorkerLost, WorkerUnblocked, fits)

pytestmark = pytest.mark.timeout(10)


# ------------------------------------------------------------------ helpers
def spec(task_id, deps=(), demand=None, max_retries=3, name=""):
    return TaskSpec(task_id, (ret(task_id),), tuple(deps),
                    {"CPU": 1.0} if demand is None else demand, max_retries, name,
                    payload=("payload", task_id))


def ret(task_id):
    return f"{task_id}.r"


def make(nodes=None, policy="least_loaded"):
    """A scheduler with ``nodes``: {node_id: (resources, [worker ids])}. Every
    node's base_workers is its number of workers."""
    s = Scheduler(policy)
    for node_id, (resources, workers) in (nodes or {}).items():
        assert s.handle(NodeJoined(node_id, resources, base_workers=len(workers))) == []
        for worker_id in workers:
            assert s.handle(WorkerJoined(worker_id, node_id)) == []
    return s


def one_node(cpus=1.0, workers=("w1",), **extra):
    return make({"n1": ({"CPU": cpus, **extra}, list(workers))})


def submit(s, sp):
    return s.handle(TaskSubmitted(sp))


def node_info(s, node_id):
    (info,) = [n for n in s.nodes() if n["node_id"] == node_id]
    return info


def kinds(commands):
    return [type(c).__name__ for c in commands]


# ---------------------------------------------------------------- dispatch
def test_dispatch_when_resources_and_idle_worker():
    s = one_node()
    a = spec("a")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert s.task_state("a") == RUNNING
    assert s.worker_task("w1") == "a"
    assert s.counts() == {PENDING: 0, READY: 0, RUNNING: 1, ASSIGNED: 0}
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    assert s.task_state("a") is None
    assert s.worker_task("w1") is None
    assert s.object_status(ret("a")) == READY


def test_dispatch_hands_back_the_spec_untouched():
    s = one_node()
    a = spec("a")
    (d,) = submit(s, a)
    assert d.spec is a and d.spec.payload == ("payload", "a")


def test_no_dispatch_without_nodes_then_dispatch_after_worker_joined():
    s = Scheduler()
    a = spec("a")
    assert submit(s, a) == []
    assert s.task_state("a") == READY
    # The node says it starts one worker itself: no StartWorker meanwhile.
    assert s.handle(NodeJoined("n1", {"CPU": 2.0}, base_workers=1)) == []
    assert s.task_state("a") == READY
    assert s.handle(WorkerJoined("w1", "n1")) == [Dispatch(a, "w1", "n1")]
    assert s.task_state("a") == RUNNING


def test_node_without_base_workers_asks_for_one_and_stops_it_when_idle():
    s = Scheduler()
    a = spec("a")
    assert submit(s, a) == []
    assert s.handle(NodeJoined("n1", {"CPU": 1.0}, base_workers=0)) == [StartWorker("n1")]
    assert s.handle(WorkerJoined("w1", "n1")) == [Dispatch(a, "w1", "n1")]
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), StopWorker("w1")]
    assert node_info(s, "n1")["workers"] == 0


def test_worker_joining_unknown_or_dead_node_or_twice_is_stopped():
    s = one_node()
    assert s.handle(WorkerJoined("wx", "nowhere")) == [StopWorker("wx")]
    assert s.handle(WorkerJoined("w1", "n1")) == [StopWorker("w1")]  # already registered
    assert s.handle(NodeLost("n1")) == []
    assert s.handle(WorkerJoined("w2", "n1")) == [StopWorker("w2")]


def test_resubmission_of_a_live_task_is_ignored():
    s = one_node()
    a = spec("a")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, a) == []
    assert s.counts()[RUNNING] == 1


def test_handle_all_applies_a_batch():
    s = Scheduler()
    a, b = spec("a"), spec("b")
    out = s.handle_all([NodeJoined("n1", {"CPU": 2.0}, base_workers=2), WorkerJoined("w1", "n1"),
                        WorkerJoined("w2", "n1"), TaskSubmitted(a), TaskSubmitted(b)])
    assert out == [Dispatch(a, "w2", "n1"), Dispatch(b, "w1", "n1")]
    assert s.handle_all([]) == []


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="unknown placement policy"):
        Scheduler("nope")


def test_fits():
    assert fits({"CPU": 1.0}, {"CPU": 1.0})
    assert fits({"CPU": 1.0}, {"CPU": 0.1 + 0.2 + 0.7})  # float noise tolerated
    assert not fits({"CPU": 1.0}, {"CPU": 1.5})
    assert not fits({"CPU": 1.0}, {"GPU": 1.0})
    assert fits({"CPU": 1.0}, {})


# ------------------------------------------------------------ dependencies
def test_task_with_two_inputs_ready_when_last_task_input_finishes():
    s = make({"n1": ({"CPU": 3.0}, ["w1", "w2", "w3"])})
    a, b, c = spec("a"), spec("b"), spec("c", deps=[ret("a"), ret("b")])
    assert submit(s, a) == [Dispatch(a, "w3", "n1")]
    assert submit(s, b) == [Dispatch(b, "w2", "n1")]
    assert submit(s, c) == []
    assert s.task_state("c") == PENDING
    assert s.handle(TaskFinished("b", "w2")) == [Publish("b", (ret("b"),))]
    assert s.task_state("c") == PENDING
    assert s.handle(TaskFinished("a", "w3")) == [Publish("a", (ret("a"),)), Dispatch(c, "w3", "n1")]


def test_task_with_two_inputs_ready_when_last_object_put():
    s = Scheduler()  # no node: producers a and b just queue
    a, b = spec("a"), spec("b")
    c = spec("c", deps=[ret("a"), ret("b")])
    for sp in (a, b, c):
        assert submit(s, sp) == []
    assert s.task_state("c") == PENDING
    assert s.handle(ObjectPut(ret("a"))) == []
    assert s.task_state("c") == PENDING
    assert s.handle(ObjectPut(ret("b"))) == []
    assert s.task_state("c") == READY
    assert s.counts() == {PENDING: 0, READY: 3, RUNNING: 0, ASSIGNED: 0}


def test_same_input_twice_counts_twice():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    a, c = spec("a"), spec("c", deps=[ret("a"), ret("a")])
    assert submit(s, a) == [Dispatch(a, "w2", "n1")]
    assert submit(s, c) == []
    assert s.handle(TaskFinished("a", "w2")) == [Publish("a", (ret("a"),)), Dispatch(c, "w2", "n1")]


def test_task_whose_inputs_are_ready_is_dispatched_at_once():
    s = one_node()
    assert s.handle(ObjectPut("x")) == []
    assert s.handle(ObjectPut("y")) == []
    assert s.object_status("x") == READY
    c = spec("c", deps=["x", "y"])
    assert submit(s, c) == [Dispatch(c, "w1", "n1")]


def test_mixed_ready_and_pending_inputs():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    assert s.handle(ObjectPut("x")) == []
    a = spec("a")
    c = spec("c", deps=["x", ret("a")])
    assert submit(s, a) == [Dispatch(a, "w2", "n1")]
    assert submit(s, c) == []
    assert s.handle(TaskFinished("a", "w2")) == [Publish("a", (ret("a"),)), Dispatch(c, "w2", "n1")]


# --------------------------------------------------------------- resources
def test_two_cpu_task_blocks_others_until_it_finishes():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    big, small = spec("big", demand={"CPU": 2.0}), spec("small")
    assert submit(s, big) == [Dispatch(big, "w2", "n1")]
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    assert submit(s, small) == []  # an idle worker, but no CPU
    assert s.task_state("small") == READY
    assert s.handle(TaskFinished("big", "w2")) == [Publish("big", (ret("big"),)),
                                                    Dispatch(small, "w2", "n1")]
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}


def test_queued_big_task_does_not_block_smaller_shape():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2", "w3"])})
    a, big, b = spec("a"), spec("big", demand={"CPU": 2.0}), spec("b")
    assert submit(s, a) == [Dispatch(a, "w3", "n1")]
    assert submit(s, big) == []
    assert submit(s, b) == [Dispatch(b, "w2", "n1")]
    assert s.handle(TaskFinished("a", "w3")) == [Publish("a", (ret("a"),))]
    assert s.handle(TaskFinished("b", "w2")) == [Publish("b", (ret("b"),)), Dispatch(big, "w2", "n1")]


def test_same_shape_queue_is_fifo():
    s = one_node()
    a, b, c = spec("a"), spec("b"), spec("c")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == []
    assert submit(s, c) == []
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),)), Dispatch(c, "w1", "n1")]


def test_custom_gpu_resource():
    s = make({"n1": ({"CPU": 4.0, "GPU": 1.0}, ["w1", "w2"])})
    g1, g2 = spec("g1", demand={"CPU": 1.0, "GPU": 1.0}), spec("g2", demand={"GPU": 1.0})
    assert submit(s, g1) == [Dispatch(g1, "w2", "n1")]
    assert node_info(s, "n1")["available"] == {"CPU": 3.0, "GPU": 0.0}
    assert submit(s, g2) == []
    c = spec("c")
    assert submit(s, c) == [Dispatch(c, "w1", "n1")]  # CPU-only work still runs
    assert s.handle(TaskFinished("c", "w1")) == [Publish("c", (ret("c"),))]
    assert s.handle(TaskFinished("g1", "w2")) == [Publish("g1", (ret("g1"),)), Dispatch(g2, "w2", "n1")]
    assert node_info(s, "n1")["available"] == {"CPU": 4.0, "GPU": 0.0}


def test_gpu_task_goes_to_the_gpu_node():
    s = make({"cpu": ({"CPU": 8.0}, ["wc"]), "gpu": ({"CPU": 1.0, "GPU": 2.0}, ["wg"])})
    g = spec("g", demand={"GPU": 1.0})
    assert submit(s, g) == [Dispatch(g, "wg", "gpu")]


def test_fractional_cpus_share_one_cpu_with_a_second_worker():
    s = one_node(cpus=1.0)
    a, b, c = (spec(t, demand={"CPU": 0.5}) for t in "abc")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == [StartWorker("n1")]  # half a CPU free, no idle worker
    assert submit(s, c) == []  # a worker is already starting, and no CPU left for c anyway
    assert s.handle(WorkerJoined("w2", "n1")) == [Dispatch(b, "w2", "n1")]
    info = node_info(s, "n1")
    assert (info["available"], info["running"], info["workers"]) == ({"CPU": 0.0}, 2, 2)
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(c, "w1", "n1")]
    # w2 is one more than the node's base worker: stopped once idle.
    assert s.handle(TaskFinished("b", "w2")) == [Publish("b", (ret("b"),)), StopWorker("w2")]
    assert s.handle(TaskFinished("c", "w1")) == [Publish("c", (ret("c"),))]
    info = node_info(s, "n1")
    assert (info["available"], info["running"], info["workers"]) == ({"CPU": 1.0}, 0, 1)


def test_nodes_reports_resources_available_and_running():
    s = Scheduler()
    s.handle(NodeJoined("n1", {"CPU": 4.0, "GPU": 1.0}, base_workers=2, address="tcp://h1:1"))
    s.handle(WorkerJoined("w1", "n1"))
    s.handle(WorkerJoined("w2", "n1"))
    a = spec("a", demand={"CPU": 1.5, "GPU": 0.5})
    assert submit(s, a) == [Dispatch(a, "w2", "n1")]
    assert s.nodes() == [{"node_id": "n1", "address": "tcp://h1:1", "alive": True,
                          "resources": {"CPU": 4.0, "GPU": 1.0},
                          "available": {"CPU": 2.5, "GPU": 0.5}, "running": 1, "workers": 2}]
    # The report is a copy.
    s.nodes()[0]["resources"]["CPU"] = 99
    assert node_info(s, "n1")["resources"]["CPU"] == 4.0


# -------------------------------------------------------------- infeasible
def test_infeasible_demand_fails_unschedulable():
    s = make({"n1": ({"CPU": 2.0}, ["w1"])})
    for task_id, demand in [("big", {"CPU": 4.0}), ("gpu", {"GPU": 1.0})]:
        sp = spec(task_id, demand=demand)
        (fail,) = submit(s, sp)
        assert isinstance(fail, FailTask) and fail.task_id == task_id
        assert fail.return_ids == (ret(task_id),)
        assert fail.failure.kind == "unschedulable"
        assert task_id in fail.failure.message
        assert s.task_state(task_id) is None
        assert s.object_status(ret(task_id)) == FAILED


def test_infeasible_only_on_dead_nodes_is_unschedulable():
    s = make({"n1": ({"CPU": 1.0}, ["w1"]), "n2": ({"CPU": 8.0}, ["w2"])})
    s.handle(NodeLost("n2"))
    (fail,) = submit(s, spec("big", demand={"CPU": 4.0}))
    assert fail.failure.kind == "unschedulable"


def test_a_rebuild_that_no_live_node_fits_waits_for_one():
    """Its result was lost with the only node that fits it: re-run to rebuild
    that result, the task waits for such a node (as a task queued or running
    there would), where a user's new submit of that demand fails at once."""
    s = make({"n1": ({"CPU": 1.0}, ["w1"]), "n2": ({"CPU": 1.0, "P": 1.0}, ["w2"])})
    sp = spec("make", demand={"CPU": 1.0, "P": 1.0})
    (dispatch,) = submit(s, sp)
    assert dispatch.worker_id == "w2"
    assert kinds(s.handle(TaskFinished("make", "w2"))) == ["Publish"]
    s.handle(NodeLost("n2"))
    out = s.handle_all([ObjectLost(ret("make")), TaskSubmitted(sp, rebuild=True)])
    assert not any(isinstance(c, FailTask) for c in out), out
    assert s.task_state("make") == READY and s.object_status(ret("make")) == PENDING
    (fail,) = submit(s, spec("other", demand={"CPU": 1.0, "P": 1.0}))
    assert fail.failure.kind == "unschedulable"
    assert s.handle(NodeJoined("n3", {"CPU": 1.0, "P": 1.0}, base_workers=1)) == []
    (dispatch,) = s.handle(WorkerJoined("w3", "n3"))
    assert (dispatch.spec.task_id, dispatch.worker_id) == ("make", "w3")


def test_dependent_of_unschedulable_task_fails_with_same_failure():
    s = one_node()
    (fail,) = submit(s, spec("big", demand={"CPU": 4.0}))
    (dep_fail,) = submit(s, spec("d", deps=[ret("big")]))
    assert dep_fail.task_id == "d" and dep_fail.failure is fail.failure


def test_infeasible_demand_waits_without_nodes():
    s = Scheduler()
    big = spec("big", demand={"CPU": 4.0})
    assert submit(s, big) == []
    assert s.task_state("big") == READY
    assert s.handle(NodeJoined("n1", {"CPU": 4.0}, base_workers=1)) == []
    assert s.handle(WorkerJoined("w1", "n1")) == [Dispatch(big, "w1", "n1")]


# --------------------------------------------------------------- placement
def test_least_loaded_spreads_over_two_nodes():
    s = make({"n1": ({"CPU": 2.0}, ["a1", "a2"]), "n2": ({"CPU": 2.0}, ["b1", "b2"])})
    t = [spec(f"t{i}") for i in range(4)]
    assert submit(s, t[0]) == [Dispatch(t[0], "a2", "n1")]
    assert submit(s, t[1]) == [Dispatch(t[1], "b2", "n2")]
    assert submit(s, t[2]) == [Dispatch(t[2], "a1", "n1")]
    assert submit(s, t[3]) == [Dispatch(t[3], "b1", "n2")]
    assert [n["running"] for n in s.nodes()] == [2, 2]


def test_least_loaded_prefers_the_larger_free_share():
    s = make({"small": ({"CPU": 2.0}, ["s1", "s2"]), "big": ({"CPU": 8.0}, ["b1", "b2", "b3"])})
    t = [spec(f"t{i}") for i in range(3)]
    # Shares: small 1.0 vs big 1.0 (tie: first); then 0.5 vs 1.0; then 0.5 vs 0.875.
    assert [c.node_id for sp in t for c in submit(s, sp)] == ["small", "big", "big"]


def test_round_robin_alternates():
    s = make({"n1": ({"CPU": 4.0}, ["a1", "a2", "a3"]), "n2": ({"CPU": 4.0}, ["b1", "b2", "b3"])},
             policy="round_robin")
    placed = [c.node_id for i in range(6) for c in submit(s, spec(f"t{i}"))]
    assert placed == ["n2", "n1", "n2", "n1", "n2", "n1"]


# ------------------------------------------------------------------ retries
def test_worker_lost_while_running_retries_on_another_worker():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    a = spec("a")
    assert submit(s, a) == [Dispatch(a, "w2", "n1")]
    assert s.handle(WorkerLost("w2", "segfault")) == [
        Retry("a", 2, "worker w2 on node n1 died: segfault"), Dispatch(a, "w1", "n1")]
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]


def test_worker_lost_on_single_worker_node_asks_for_a_new_worker():
    s = one_node()
    a = spec("a")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert s.handle(WorkerLost("w1")) == [Retry("a", 2, "worker w1 on node n1 died: worker died"),
                                          StartWorker("n1")]
    assert s.task_state("a") == READY
    assert s.handle(WorkerJoined("w2", "n1")) == [Dispatch(a, "w2", "n1")]


def test_idle_worker_lost_changes_nothing_else():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    assert s.handle(WorkerLost("w1")) == []
    assert s.handle(WorkerLost("w1")) == []  # unknown now
    assert node_info(s, "n1")["workers"] == 1


def test_worker_lost_after_retries_exhausted_fails_worker_crashed():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    a = spec("a", max_retries=1, name="my_func")
    assert submit(s, a) == [Dispatch(a, "w2", "n1")]
    assert s.handle(WorkerLost("w2")) == [Retry("a", 2, "worker w2 on node n1 died: worker died"),
                                          Dispatch(a, "w1", "n1")]
    (fail,) = s.handle(WorkerLost("w1", "oom"))  # nothing queued: no StartWorker for the empty node
    assert isinstance(fail, FailTask) and fail.task_id == "a" and fail.return_ids == (ret("a"),)
    assert fail.failure.kind == "worker_crashed"
    assert "my_func" in fail.failure.message and "n1" in fail.failure.message
    assert "oom" in fail.failure.message and "2 attempt" in fail.failure.message
    assert s.task_state("a") is None


def test_worker_crashed_message_names_task_id_without_name():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    a = spec("task-123", max_retries=0)
    submit(s, a)
    (fail,) = s.handle(WorkerLost("w2"))
    assert fail.failure.kind == "worker_crashed"
    assert "task-123" in fail.failure.message and "n1" in fail.failure.message


def test_max_retries_minus_one_retries_forever():
    s = make({"n1": ({"CPU": 1.0}, ["w0"])})
    a = spec("a", max_retries=-1)
    assert submit(s, a) == [Dispatch(a, "w0", "n1")]
    for i in range(10):
        assert s.handle(WorkerLost(f"w{i}")) == [
            Retry("a", i + 2, f"worker w{i} on node n1 died: worker died"), StartWorker("n1")]
        assert s.handle(WorkerJoined(f"w{i + 1}", "n1")) == [Dispatch(a, f"w{i + 1}", "n1")]
    for i in range(10):  # retryable errors do not run out either
        failure = Failure("task_error", f"boom {i}")
        assert s.handle(TaskErrored("a", "w10", failure, retryable=True)) == [
            Retry("a", i + 12, f"raised: boom {i}"), Dispatch(a, "w10", "n1")]
    assert s.task_state("a") == RUNNING
    assert s.handle(TaskFinished("a", "w10")) == [Publish("a", (ret("a"),))]


def test_retryable_error_retried_up_to_max_retries_then_fails_with_last_failure():
    s = one_node()
    a = spec("a", max_retries=2)
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    failures = [Failure("task_error", f"Traceback...\nValueError: {i}", payload=i) for i in range(3)]
    for i in range(2):
        assert s.handle(TaskErrored("a", "w1", failures[i], retryable=True)) == [
            Retry("a", i + 2, f"raised: ValueError: {i}"), Dispatch(a, "w1", "n1")]
    (fail,) = s.handle(TaskErrored("a", "w1", failures[2], retryable=True))
    assert fail == FailTask("a", (ret("a"),), failures[2])
    assert fail.failure is failures[2]
    assert s.task_state("a") is None
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}


def test_retryable_error_with_empty_message():
    s = one_node()
    a = spec("a", max_retries=1)
    submit(s, a)
    assert s.handle(TaskErrored("a", "w1", Failure("task_error", ""), retryable=True)) == [
        Retry("a", 2, "raised: "), Dispatch(a, "w1", "n1")]


def test_non_retryable_error_fails_at_once():
    s = one_node()
    a, b = spec("a", max_retries=5), spec("b")
    submit(s, a)
    assert submit(s, b) == []
    failure = Failure("task_error", "boom")
    assert s.handle(TaskErrored("a", "w1", failure, retryable=False)) == [
        FailTask("a", (ret("a"),), failure), Dispatch(b, "w1", "n1")]


def test_retries_share_one_budget_across_crashes_and_errors():
    s = one_node()
    a = spec("a", max_retries=2)
    submit(s, a)
    assert kinds(s.handle(WorkerLost("w1"))) == ["Retry", "StartWorker"]
    assert s.handle(WorkerJoined("w2", "n1")) == [Dispatch(a, "w2", "n1")]
    assert kinds(s.handle(TaskErrored("a", "w2", Failure("task_error", "x"), retryable=True))) == [
        "Retry", "Dispatch"]
    failure = Failure("task_error", "y")
    assert s.handle(TaskErrored("a", "w2", failure, retryable=True)) == [FailTask("a", (ret("a"),), failure)]


# ------------------------------------------------------ failure propagation
def test_failure_propagates_down_a_chain_with_the_same_failure():
    s = one_node()
    a, b, c = spec("a"), spec("b", deps=[ret("a")]), spec("c", deps=[ret("b")])
    submit(s, a)
    assert submit(s, b) == [] and submit(s, c) == []
    failure = Failure("task_error", "boom")
    out = s.handle(TaskErrored("a", "w1", failure))
    assert out == [FailTask("a", (ret("a"),), failure), FailTask("b", (ret("b"),), failure),
                   FailTask("c", (ret("c"),), failure)]
    assert all(c.failure is failure for c in out)
    assert s.counts() == {PENDING: 0, READY: 0, RUNNING: 0, ASSIGNED: 0}
    assert [s.object_status(ret(t)) for t in "abc"] == [FAILED] * 3


def test_failure_propagates_through_a_diamond_once_each_and_spares_a_sibling():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    root = spec("root")
    a = spec("a", deps=[ret("root")])
    sib = spec("sib", deps=[ret("root")])
    b, c = spec("b", deps=[ret("a")]), spec("c", deps=[ret("a")])
    d = spec("d", deps=[ret("b"), ret("c")])
    after_sib = spec("after_sib", deps=[ret("sib")])
    assert submit(s, root) == [Dispatch(root, "w2", "n1")]
    for sp in (a, sib, b, c, d, after_sib):
        assert submit(s, sp) == []
    assert s.handle(TaskFinished("root", "w2")) == [Publish("root", (ret("root"),)),
                                                     Dispatch(a, "w2", "n1"), Dispatch(sib, "w1", "n1")]
    failure = Failure("task_error", "boom")
    out = s.handle(TaskErrored("a", "w2", failure))
    assert out[0] == FailTask("a", (ret("a"),), failure)
    assert sorted(c.task_id for c in out) == ["a", "b", "c", "d"]
    assert all(isinstance(c, FailTask) and c.failure is failure for c in out)
    assert s.task_state("sib") == RUNNING
    assert s.handle(TaskFinished("sib", "w1")) == [Publish("sib", (ret("sib"),)),
                                                    Dispatch(after_sib, "w1", "n1")]
    assert s.handle(TaskFinished("after_sib", "w1")) == [Publish("after_sib", (ret("after_sib"),))]


def test_task_submitted_after_its_input_failed_fails_at_once_with_that_failure():
    s = one_node()
    submit(s, spec("a"))
    failure = Failure("task_error", "boom")
    s.handle(TaskErrored("a", "w1", failure))
    (fail,) = submit(s, spec("b", deps=[ret("a")]))
    assert fail.task_id == "b" and fail.failure is failure


def test_unknown_input_object_fails_object_lost():
    s = one_node()
    b = spec("b", deps=["ghost"])
    (fail,) = submit(s, b)
    assert fail.task_id == "b" and fail.failure.kind == "object_lost"
    assert "ghost" in fail.failure.message
    (dep_fail,) = submit(s, spec("c", deps=[ret("b")]))
    assert dep_fail.failure is fail.failure
    # The worker is still free for other work.
    ok = spec("ok")
    assert submit(s, ok) == [Dispatch(ok, "w1", "n1")]


def test_unknown_input_next_to_pending_input_does_not_leak_consumers():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    a = spec("a")
    submit(s, a)
    (fail,) = submit(s, spec("b", deps=[ret("a"), "ghost"]))
    assert fail.failure.kind == "object_lost"
    assert s.handle(ObjectsReleased((ret("a"),))) == []
    assert s.handle(TaskFinished("a", "w2")) == [Publish("a", (ret("a"),)), ReleaseObject(ret("a"))]


# ------------------------------------------------------------ cancellation
def test_cancel_pending_task_cancels_it_and_its_dependents():
    s = one_node()
    a = spec("a")
    b, c = spec("b", deps=[ret("a")]), spec("c", deps=[ret("b")])
    submit(s, a)
    submit(s, b)
    submit(s, c)
    out = s.handle(CancelRequested("b"))
    assert [(x.task_id, type(x).__name__) for x in out] == [("b", "FailTask"), ("c", "FailTask")]
    assert out[0].failure.kind == "cancelled" and "b" in out[0].failure.message
    assert out[1].failure is out[0].failure
    # a is unaffected and finishes; nothing runs after it.
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    assert s.counts() == {PENDING: 0, READY: 0, RUNNING: 0, ASSIGNED: 0}


def test_cancel_queued_task_is_skipped_by_the_queue():
    s = one_node()
    a, b, c = spec("a"), spec("b"), spec("c")
    submit(s, a)
    submit(s, b)
    submit(s, c)
    (fail,) = s.handle(CancelRequested("b"))
    assert fail.task_id == "b" and fail.failure.kind == "cancelled"
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(c, "w1", "n1")]


@pytest.mark.parametrize("ending", ["errored", "errored_retryable", "finished", "worker_lost"])
def test_cancel_running_task_interrupts_and_ends_cancelled_without_retry(ending):
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    a = spec("a", max_retries=5)
    d = spec("d", deps=[ret("a")])
    assert submit(s, a) == [Dispatch(a, "w2", "n1")]
    submit(s, d)
    force = ending == "worker_lost"
    assert s.handle(CancelRequested("a", force=force)) == [InterruptTask("a", "w2", force)]
    assert s.task_state("a") == RUNNING
    if ending == "errored":
        out = s.handle(TaskErrored("a", "w2", Failure("task_error", "KeyboardInterrupt"), cancelled=True))
    elif ending == "errored_retryable":
        out = s.handle(TaskErrored("a", "w2", Failure("task_error", "other"), retryable=True))
    elif ending == "finished":
        out = s.handle(TaskFinished("a", "w2"))
    else:
        out = s.handle(WorkerLost("w2", "killed"))
    assert [(x.task_id, type(x).__name__) for x in out] == [("a", "FailTask"), ("d", "FailTask")]
    assert out[0].failure.kind == "cancelled" and out[1].failure is out[0].failure
    assert s.counts() == {PENDING: 0, READY: 0, RUNNING: 0, ASSIGNED: 0}
    assert node_info(s, "n1")["available"] == {"CPU": 2.0}


def test_cancelled_flag_from_worker_ends_task_cancelled_without_request():
    s = one_node()
    submit(s, spec("a"))
    (fail,) = s.handle(TaskErrored("a", "w1", Failure("task_error", "KeyboardInterrupt"), cancelled=True))
    assert fail.failure.kind == "cancelled"


def test_cancel_twice_then_force():
    s = one_node()
    submit(s, spec("a"))
    assert s.handle(CancelRequested("a")) == [InterruptTask("a", "w1", False)]
    assert s.handle(CancelRequested("a")) == []
    assert s.handle(CancelRequested("a", force=True)) == [InterruptTask("a", "w1", True)]


def test_cancel_finished_or_unknown_task_yields_nothing():
    s = one_node()
    submit(s, spec("a"))
    s.handle(TaskFinished("a", "w1"))
    assert s.handle(CancelRequested("a")) == []
    assert s.handle(CancelRequested("a", force=True)) == []
    assert s.handle(CancelRequested("nope")) == []
    submit(s, spec("b"))
    s.handle(TaskErrored("b", "w1", Failure("task_error", "x")))
    assert s.handle(CancelRequested("b")) == []


# ------------------------------------------------------------ stale reports
def test_stale_finish_from_old_worker_is_ignored():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    a = spec("a")
    submit(s, a)  # on w2
    assert kinds(s.handle(WorkerLost("w2"))) == ["Retry", "Dispatch"]  # now on w1
    assert s.handle(TaskFinished("a", "w2")) == []
    assert s.handle(TaskErrored("a", "w2", Failure("task_error", "x"))) == []
    assert s.handle(WorkerBlocked("w2")) == []
    assert s.task_state("a") == RUNNING
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    assert s.handle(TaskFinished("a", "w1")) == []  # duplicate report


def test_finish_reported_by_a_different_live_worker_is_ignored():
    s = make({"n1": ({"CPU": 2.0}, ["w1", "w2"])})
    submit(s, spec("a"))  # on w2
    assert s.handle(TaskFinished("a", "w1")) == []
    assert s.handle(TaskFinished("unknown", "w1")) == []
    assert s.task_state("a") == RUNNING


# ---------------------------------------------------------- blocked workers
def test_blocked_worker_releases_cpu_and_an_extra_worker_runs_queued_task():
    s = one_node()
    a, b = spec("a"), spec("b")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == []
    assert s.handle(WorkerBlocked("w1")) == [StartWorker("n1")]
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}
    assert s.handle(WorkerBlocked("w1")) == []  # already blocked
    assert s.handle(WorkerJoined("w2", "n1")) == [Dispatch(b, "w2", "n1")]
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    assert s.handle(WorkerUnblocked("w1")) == []  # takes its CPU back: oversubscribed for a while
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}  # reported clamped at zero
    assert s.handle(WorkerUnblocked("w1")) == []  # not blocked any more
    assert s.handle(TaskFinished("b", "w2")) == [Publish("b", (ret("b"),)), StopWorker("w2")]
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    info = node_info(s, "n1")
    assert (info["available"], info["workers"], info["running"]) == ({"CPU": 1.0}, 1, 0)


def test_blocked_worker_uses_an_idle_worker_without_starting_one():
    s = make({"n1": ({"CPU": 1.0}, ["w1", "w2"])})
    a, b = spec("a"), spec("b")
    assert submit(s, a) == [Dispatch(a, "w2", "n1")]
    assert submit(s, b) == []
    assert s.handle(WorkerBlocked("w2")) == [Dispatch(b, "w1", "n1")]


def test_blocked_worker_then_finishes_while_blocked_releases_nothing_twice():
    s = one_node()
    submit(s, spec("a"))
    assert s.handle(WorkerBlocked("w1")) == []  # nothing queued: no extra worker
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}
    b = spec("b")
    assert submit(s, b) == [Dispatch(b, "w1", "n1")]
    assert s.handle(WorkerUnblocked("w1")) == []  # not blocked: ignored
    assert node_info(s, "n1")["available"] == {"CPU": 0.0}


def test_blocked_worker_lost_releases_nothing_twice():
    s = one_node()
    a = spec("a", max_retries=0)
    submit(s, a)
    s.handle(WorkerBlocked("w1"))
    (fail,) = s.handle(WorkerLost("w1"))
    assert fail.failure.kind == "worker_crashed"
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}


def test_idle_worker_blocked_is_ignored():
    s = one_node()
    assert s.handle(WorkerBlocked("w1")) == []
    assert s.handle(WorkerBlocked("nope")) == []
    assert s.handle(WorkerUnblocked("nope")) == []
    assert node_info(s, "n1")["available"] == {"CPU": 1.0}


def test_extra_worker_is_kept_while_a_worker_is_blocked_then_stopped():
    s = one_node()
    submit(s, spec("a"))
    submit(s, spec("b"))
    assert s.handle(WorkerBlocked("w1")) == [StartWorker("n1")]
    s.handle(CancelRequested("b"))
    # Nothing to do, but w1 still waits in get: keep the extra worker for the
    # next nested task instead of starting a new one.
    assert s.handle(WorkerJoined("w2", "n1")) == []
    assert node_info(s, "n1")["workers"] == 2
    assert s.handle(WorkerUnblocked("w1")) == [StopWorker("w2")]
    assert node_info(s, "n1")["workers"] == 1


def test_nested_tasks_go_to_the_front_of_the_queue():
    s = one_node()
    submit(s, spec("busy"))
    submit(s, spec("first"))
    submit(s, TaskSpec("nested", ("nested.r",), nested=True))
    assert [c.spec.task_id for c in s.handle(TaskFinished("busy", "w1")) if isinstance(c, Dispatch)] == ["nested"]


# ---------------------------------------------------------------- NodeLost
def test_node_lost_retries_its_running_tasks_elsewhere():
    s = make({"n1": ({"CPU": 1.0}, ["w1"]), "n2": ({"CPU": 1.0}, ["w2"])})
    a, b = spec("a"), spec("b")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == [Dispatch(b, "w2", "n2")]
    c = spec("c")
    assert submit(s, c) == []
    out = s.handle(NodeLost("n1", "heartbeat timeout"))
    assert out == [Retry("a", 2, "node n1 lost (heartbeat timeout) while worker w1 ran it")]
    assert s.task_state("a") == READY
    info = node_info(s, "n1")
    assert (info["alive"], info["available"], info["running"], info["workers"]) == (False, {}, 0, 0)
    assert node_info(s, "n2")["alive"] is True
    assert sum(n["resources"].get("CPU", 0) for n in s.nodes() if n["alive"]) == 1.0
    assert s.worker_task("w1") is None
    # Stale reports from the dead node's worker are ignored.
    assert s.handle(TaskFinished("a", "w1")) == []
    assert s.handle(WorkerLost("w1")) == []
    # The queue drains on n2; the retried task went to the back of its queue.
    assert s.handle(TaskFinished("b", "w2")) == [Publish("b", (ret("b"),)), Dispatch(c, "w2", "n2")]
    assert s.handle(TaskFinished("c", "w2")) == [Publish("c", (ret("c"),)), Dispatch(a, "w2", "n2")]


def test_node_lost_dispatches_retry_at_once_when_another_node_is_free():
    s = make({"n1": ({"CPU": 1.0}, ["w1"]), "n2": ({"CPU": 1.0}, ["w2"])})
    a = spec("a")
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert s.handle(NodeLost("n1")) == [Retry("a", 2, "node n1 lost (node lost) while worker w1 ran it"),
                                        Dispatch(a, "w2", "n2")]
    assert s.handle(NodeLost("n1")) == []  # already dead
    assert s.handle(NodeLost("nope")) == []


def test_node_lost_exhausting_retries_fails_the_task():
    s = one_node()
    a = spec("a", max_retries=0, name="f")
    submit(s, a)
    (fail,) = s.handle(NodeLost("n1"))
    assert fail.failure.kind == "worker_crashed"
    assert "f" in fail.failure.message and "n1" in fail.failure.message


def test_node_rejoining_with_same_id_is_revived():
    s = one_node()
    a = spec("a")
    submit(s, a)
    assert kinds(s.handle(NodeLost("n1"))) == ["Retry"]
    assert s.handle(NodeJoined("n1", {"CPU": 2.0}, base_workers=1)) == []
    info = node_info(s, "n1")
    assert (info["alive"], info["resources"], info["available"]) == (True, {"CPU": 2.0}, {"CPU": 2.0})
    assert len(s.nodes()) == 1
    assert s.handle(WorkerJoined("w1", "n1")) == [Dispatch(a, "w1", "n1")]


def test_node_reregistering_while_alive_loses_its_old_incarnation():
    s = one_node()
    a = spec("a")
    submit(s, a)
    assert s.handle(NodeJoined("n1", {"CPU": 1.0}, base_workers=1)) == [
        Retry("a", 2, "node n1 lost (node re-registered) while worker w1 ran it")]
    assert node_info(s, "n1")["workers"] == 0
    assert s.handle(TaskFinished("a", "w1")) == []  # old incarnation's report
    assert s.handle(WorkerJoined("w1", "n1")) == [Dispatch(a, "w1", "n1")]


def test_node_lost_retries_in_worker_join_order_whatever_the_hash_seed():
    # Workers are kept in join order, not in a set of strings whose order would
    # change with PYTHONHASHSEED (and make a failing run unreproducible).
    s = make({"n1": ({"CPU": 3.0}, ["w1", "w2", "w3"]), "n2": ({"CPU": 1.0}, [])})
    a, b, c = spec("a"), spec("b"), spec("c")
    assert submit(s, a) == [Dispatch(a, "w3", "n1")]  # idle workers are a stack
    assert submit(s, b) == [Dispatch(b, "w2", "n1")]
    assert submit(s, c) == [Dispatch(c, "w1", "n1")]
    assert s.handle(NodeLost("n1", "gone")) == [
        Retry("c", 2, "node n1 lost (gone) while worker w1 ran it"),
        Retry("b", 2, "node n1 lost (gone) while worker w2 ran it"),
        Retry("a", 2, "node n1 lost (gone) while worker w3 ran it"),
        StartWorker("n2")]
    assert s.handle(WorkerJoined("w4", "n2")) == [Dispatch(c, "w4", "n2")]


def test_node_lost_with_a_blocked_worker():
    s = make({"n1": ({"CPU": 1.0}, ["w1"]), "n2": ({"CPU": 1.0}, ["w2"])})
    a = spec("a")
    submit(s, a)
    s.handle(WorkerBlocked("w1"))
    assert kinds(s.handle(NodeLost("n1"))) == ["Retry", "Dispatch"]
    assert node_info(s, "n2")["available"] == {"CPU": 0.0}


# ---------------------------------------------------------- ObjectsReleased
def test_release_waits_for_unfinished_consumers():
    s = make({"n1": ({"CPU": 1.0}, ["w1"])})
    s.handle(ObjectPut("x"))
    a, b = spec("a", deps=["x"]), spec("b", deps=["x"])
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert submit(s, b) == []
    assert s.handle(ObjectsReleased(("x",))) == []
    assert s.object_status("x") == READY
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),)), ReleaseObject("x")]
    assert s.object_status("x") is None
    # A later task that names the freed object fails.
    (fail,) = submit(s, spec("c", deps=["x"]))
    assert fail.failure.kind == "object_lost"


def test_release_of_unused_ready_object_is_immediate():
    s = one_node()
    s.handle(ObjectPut("x"))
    s.handle(ObjectPut("y"))
    assert s.handle(ObjectsReleased(("x", "unknown", "y"))) == [ReleaseObject("x"), ReleaseObject("y")]
    assert s.handle(ObjectsReleased(("x",))) == []


def test_release_survives_retries_and_waits_for_failed_consumers():
    s = one_node()
    s.handle(ObjectPut("x"))
    a = spec("a", deps=["x"], max_retries=1)
    submit(s, a)
    assert s.handle(ObjectsReleased(("x",))) == []
    assert kinds(s.handle(WorkerLost("w1"))) == ["Retry", "StartWorker"]
    assert s.handle(WorkerJoined("w2", "n1")) == [Dispatch(a, "w2", "n1")]
    failure = Failure("task_error", "x")
    assert s.handle(TaskErrored("a", "w2", failure)) == [FailTask("a", (ret("a"),), failure),
                                                          ReleaseObject("x")]


def test_release_counts_cancelled_consumers_as_done():
    s = one_node()
    s.handle(ObjectPut("x"))
    submit(s, spec("a"))
    b = spec("b", deps=["x", ret("a")])
    submit(s, b)
    assert s.handle(ObjectsReleased(("x",))) == []
    out = s.handle(CancelRequested("b"))
    assert kinds(out) == ["FailTask", "ReleaseObject"] and out[1] == ReleaseObject("x")


def test_release_of_a_pending_task_result_happens_once_it_is_published():
    s = one_node()
    submit(s, spec("a"))
    assert s.handle(ObjectsReleased((ret("a"),))) == []
    assert s.object_status(ret("a")) == PENDING
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), ReleaseObject(ret("a"))]
    assert s.object_status(ret("a")) is None


def test_release_of_a_pending_task_result_happens_once_it_failed():
    s = one_node()
    submit(s, spec("a"))
    assert s.handle(ObjectsReleased((ret("a"),))) == []
    failure = Failure("task_error", "x")
    assert s.handle(TaskErrored("a", "w1", failure)) == [FailTask("a", (ret("a"),), failure),
                                                          ReleaseObject(ret("a"))]


def test_release_of_a_pending_object_made_ready_by_put():
    s = Scheduler()
    submit(s, spec("a"))
    assert s.handle(ObjectsReleased((ret("a"),))) == []
    assert s.handle(ObjectPut(ret("a"))) == [ReleaseObject(ret("a"))]


def test_release_of_result_waits_for_its_consumers():
    s = make({"n1": ({"CPU": 1.0}, ["w1"])})
    a, b = spec("a"), spec("b", deps=[ret("a")])
    submit(s, a)
    submit(s, b)
    assert s.handle(ObjectsReleased((ret("a"),))) == []
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),)), ReleaseObject(ret("a"))]


# ----------------------------------------------------------- re-submission
def test_resubmitted_finished_task_runs_again_and_its_result_is_pending_meanwhile():
    s = one_node()
    a = spec("a")
    submit(s, a)
    s.handle(TaskFinished("a", "w1"))
    assert s.object_status(ret("a")) == READY
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    assert s.object_status(ret("a")) == PENDING
    b = spec("b", deps=[ret("a")])
    assert submit(s, b) == []  # waits for the new value
    # Released meanwhile: kept until the rerun is published and b is done.
    assert s.handle(ObjectsReleased((ret("a"),))) == []
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]
    assert s.handle(TaskFinished("b", "w1")) == [Publish("b", (ret("b"),)), ReleaseObject(ret("a"))]


def test_resubmitted_failed_task_runs_again():
    s = one_node()
    a = spec("a")
    submit(s, a)
    s.handle(TaskErrored("a", "w1", Failure("task_error", "x")))
    assert s.object_status(ret("a")) == FAILED
    assert submit(s, a) == [Dispatch(a, "w1", "n1")]
    b = spec("b", deps=[ret("a")])
    assert submit(s, b) == []  # not failed by the old failure
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),)), Dispatch(b, "w1", "n1")]


def test_result_put_and_freed_under_a_running_task_does_not_crash():
    s = one_node()
    a = spec("a")
    submit(s, a)
    assert s.handle(ObjectPut(ret("a"))) == []
    assert s.handle(ObjectsReleased((ret("a"),))) == [ReleaseObject(ret("a"))]
    assert s.handle(TaskFinished("a", "w1")) == [Publish("a", (ret("a"),))]
    assert s.object_status(ret("a")) == READY
    b = spec("b")
    submit(s, b)
    s.handle(ObjectPut(ret("b")))
    s.handle(ObjectsReleased((ret("b"),)))
    failure = Failure("task_error", "x")
    assert s.handle(TaskErrored("b", "w1", failure)) == [FailTask("b", (ret("b"),), failure)]
    assert s.object_status(ret("b")) == FAILED
