"""``orion.timeline``: every task the cluster ran as a Chrome trace (Trace Event Format).

Runs a small DAG on each transport (and on a real head reached over ZeroMQ),
then checks the trace's shape (``traceEvents``, complete ``X`` events, pid/tid
named after nodes/workers, microseconds) and each task's times.
"""
from __future__ import annotations

import json
import time

import pytest

import orion
from orion import ids
from orion.observe.tasklog import RECORD_FIELDS, TaskLog
from orion.observe.timeline import chrome_trace
from orion.scheduler.events import Failure, TaskSpec

from helpers_cluster import LocalCluster

pytestmark = pytest.mark.timeout(90)

CLOCK_SLACK = 0.005  # seconds: times taken in different processes of one machine


@orion.remote
def inc(x):
    return x + 1


@orion.remote
def add(a, b):
    return a + b


@orion.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@orion.remote
def explode():
    raise ValueError("timeline boom")


def run_dag():
    """A small DAG; returns {task id: name} of every task it submitted."""
    a = inc.remote(1)
    b = inc.remote(a)
    c = add.remote(a, b)
    naps = [nap.options(name="nap").remote(0.05) for _ in range(3)]
    total = add.remote(c, naps[0])
    assert orion.get(total) == 5 + 0.05
    assert orion.get(naps) == [0.05] * 3
    bad = explode.remote()
    downstream = inc.remote(bad)
    with pytest.raises(ValueError):
        orion.get(downstream)
    refs = {a: "inc", b: "inc", c: "add", total: "add", bad: "explode", downstream: "inc"}
    refs.update({ref: "nap" for ref in naps})
    return {ids.task_of(ref.id): name for ref, name in refs.items()}


def check_trace(trace, tasks):
    """``trace`` is a valid Chrome trace holding every task of ``tasks`` ({task id: name})."""
    assert isinstance(trace, dict) and isinstance(trace["traceEvents"], list)
    json.dumps(trace)  # plain JSON
    events = trace["traceEvents"]
    for event in events:
        assert event["ph"] in ("X", "M", "b", "e", "i"), event
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int), event
        if event["ph"] != "M":
            assert isinstance(event["ts"], (int, float)), event
    names = {(e["pid"], e["tid"]) if e["name"] == "thread_name" else e["pid"]: e["args"]["name"]
             for e in events if e["ph"] == "M" and e["name"] in ("process_name", "thread_name")}
    runs = {e["args"]["task_id"]: e for e in events if e["ph"] == "X" and e["cat"] == "task"}
    # Every task that ran is there, named, on its node's process and its worker's thread.
    ran = {task_id: name for task_id, name in tasks.items() if task_id in runs}
    not_run = set(tasks) - set(ran)
    assert len(ran) == len(tasks) - 1, f"missing runs: {not_run}"  # the dependent of the failed task never ran
    instants = {e["args"]["task_id"]: e for e in events if e["ph"] == "i"}
    assert not_run <= set(instants)
    for task_id, name in ran.items():
        event = runs[task_id]
        args = event["args"]
        assert event["name"] == name
        assert event["dur"] >= 0
        assert names[event["pid"]] == f"node {args['node']}"
        assert names[(event["pid"], event["tid"])] == f"worker {args['worker']}"
        # ts/dur are microseconds of the worker-reported run.
        assert event["ts"] == pytest.approx(args["started"] * 1e6, abs=1)
        assert event["dur"] == pytest.approx((args["finished"] - args["started"]) * 1e6, abs=1)
        assert args["state"] == ("failed" if name == "explode" else "finished")
        # queued <= started <= finished, and the phases in between add up.
        assert args["started"] <= args["finished"]
        assert args["submitted"] <= args["ready"] <= args["dispatched"]
        assert args["dispatched"] <= args["started"] + CLOCK_SLACK
        assert args["finished"] <= args["ended"] + CLOCK_SLACK
        assert args["submitted"] <= args["started"] + CLOCK_SLACK
        for phase in ("waiting_for_inputs_ms", "queued_ms", "fetching_inputs_ms", "running_ms"):
            assert args[phase] >= 0
        if name == "nap":
            assert event["dur"] >= 50_000 * 0.9  # it slept 50 ms
    # A task with inputs waited for them: it became ready once its producer ended.
    by_name = {}
    for task_id, name in ran.items():
        by_name.setdefault(name, []).append(runs[task_id]["args"])
    assert any(args["ready"] > args["submitted"] for args in by_name["add"])
    # Slices on one worker's track never overlap (they nest trivially).
    tracks = {}
    for event in events:
        if event["ph"] == "X":
            tracks.setdefault((event["pid"], event["tid"]), []).append((event["ts"], event["ts"] + event["dur"]))
    for spans in tracks.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end - 1, spans  # 1 us of rounding
    # Async phases come in begin/end pairs.
    begins = sorted((e["id"], e["name"]) for e in events if e["ph"] == "b")
    ends = sorted((e["id"], e["name"]) for e in events if e["ph"] == "e")
    assert begins == ends


def test_timeline_holds_every_task_of_a_dag(cluster, tmp_path):
    tasks = run_dag()
    path = tmp_path / "trace.json"
    assert orion.timeline(path) == str(path)
    check_trace(json.loads(path.read_text()), tasks)
    # Without a path: the trace itself.
    check_trace(orion.timeline(), tasks)


def test_timeline_over_zeromq_from_a_remote_driver(tmp_path):
    """A driver connected to a running head asks for the records with a ``timeline`` message."""
    local = LocalCluster()
    try:
        local.start_head()
        node_id = local.node_id("tl")
        local.start_node(node_id, num_workers=2)
        local.wait_registered([node_id])
        orion.init(address=local.address)
        tasks = run_dag()
        path = orion.timeline(tmp_path / "remote.json")
        trace = json.loads(open(path).read())
        check_trace(trace, tasks)
        nodes = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
        assert f"node {node_id}" in nodes
    finally:
        orion.shutdown()
        local.cleanup()


def test_timeline_needs_a_driver():
    with pytest.raises(orion.OrionError):
        orion.timeline()


# ----------------------------------------------------------------- units
def _spec(task_id, deps=(), name="f"):
    return TaskSpec(task_id, (task_id + "0001",), tuple(deps), {"CPU": 1.0}, 3, name)


def test_task_log_keeps_a_bounded_ring():
    log = TaskLog(ring_size=10)
    for i in range(25):
        task_id = f"t{i:04d}"
        log.submitted([_spec(task_id)])
        log.dispatched(_spec(task_id), "w1", "n1", 100.0 + i)
        log.reported("w1", task_id, (100.5 + i, 100.6 + i))
        log.finished(task_id, 100.7 + i)
    records = [dict(zip(RECORD_FIELDS, r)) for r in log.records()]
    assert [r["task_id"] for r in records] == [f"t{i:04d}" for i in range(15, 25)]
    assert len(log._index) == 10  # evicted entries leave the index too
    assert log.counters["f"][:2] == [25, 25]


def test_task_log_ignores_stale_reports_and_resets_on_retry():
    log = TaskLog()
    log.submitted([_spec("a")])
    log.dispatched(_spec("a"), "w1", "n1", 1.0)
    log.retried("a", 2.0)  # w1 died: the task goes back to the queue
    log.dispatched(_spec("a"), "w2", "n2", 3.0)
    log.reported("w1", "a", (1.5, 2.5))  # the lost worker's late report
    log.reported("w2", "a", (3.5, 4.0))
    log.finished("a", 4.1)
    (record,) = [dict(zip(RECORD_FIELDS, r)) for r in log.records()]
    assert (record["worker"], record["node"], record["attempts"]) == ("w2", "n2", 2)
    assert (record["ready"], record["dispatched"], record["started"], record["finished"]) == (2.0, 3.0, 3.5, 4.0)
    assert log.counters["f"][4] == 1  # retried once


def test_task_log_ready_time_is_when_the_last_input_ended():
    log = TaskLog(clock=lambda: 10.0)
    log.submitted([_spec("p1"), _spec("p2"), _spec("c", deps=["p10001", "p20001"])])
    for task_id, end in (("p1", 12.0), ("p2", 13.0)):
        log.dispatched(_spec(task_id), "w1", "n1", 11.0)
        log.finished(task_id, end)
    log.dispatched(_spec("c", deps=["p10001", "p20001"]), "w1", "n1", 13.5)
    record = dict(zip(RECORD_FIELDS, log.records()[-1]))
    assert (record["submitted"], record["ready"], record["dispatched"]) == (10.0, 13.0, 13.5)


def test_failures_are_recorded_once_with_their_dependents():
    log = TaskLog(clock=lambda: 1.0)
    log.submitted([_spec("a", name="root"), _spec("b", deps=["a0001"], name="child")])
    log.dispatched(_spec("a", name="root"), "w1", "n1", 1.0)
    failure = Failure("task_error", "ValueError: x")
    log.failed("a", failure, 2.0)
    log.failed("b", failure, 2.0)  # the same failure reaching its dependent
    (error,) = log.errors
    assert (error["name"], error["dependents"], error["worker"]) == ("root", 1, "w1")
    assert log.counters["child"][2] == 1
    log.submitted([_spec("c", name="child")])
    log.failed("c", Failure("cancelled", "cancelled"), 3.0)  # cancels are counted, not shown as errors
    assert len(log.errors) == 1 and log.counters["child"][3] == 1


def test_pipelined_fetch_slices_do_not_overlap_the_previous_run():
    """A task sent to a busy worker (pipelining) was dispatched before the previous
    run ended: its fetch slice starts when that run ends."""
    records = [
        ["t1", "f", "finished", "n1", "w1", 1, 1.0, 1.0, 1.0, 1.1, 2.0, 2.1],
        ["t2", "f", "finished", "n1", "w1", 1, 1.0, 1.0, 1.5, 2.01, 3.0, 3.1],
        ["t3", "g", "failed", None, None, 0, 1.0, None, None, None, None, 2.2],  # never ran
    ]
    events = chrome_trace(records)["traceEvents"]
    fetch = [e for e in events if e["ph"] == "X" and e["name"] == "fetch inputs"]
    assert [(e["args"]["task_id"], e["ts"], e["dur"]) for e in fetch] == [
        ("t1", 1.0e6, pytest.approx(0.1e6)), ("t2", 2.0e6, pytest.approx(0.01e6))]
    (instant,) = [e for e in events if e["ph"] == "i"]
    assert instant["args"] == {"task_id": "t3", "state": "failed"}
