"""A real multi-node cluster on localhost: ``orion head`` plus three ``orion worker``
nodes as subprocesses, and this process as the driver (``orion.init(address=...)``).

The tests share one cluster (module fixture) and run in file order: the last ones
pause a node (SIGSTOP: evicted, then re-registered after SIGCONT) and finally
stop everything with SIGTERM, checking that no process is left behind.
Each node runs with its own ``NODE_TAG`` in its environment, which its worker
processes inherit, so a task can tell which node ran it.
"""
from __future__ import annotations

import gc
import json
import os
import re
import signal
import time
import uuid

import pytest

import orion

from helpers_cluster import LocalCluster, kill_pids, pid_alive, port_is_free, run_orion, wait_until, worker_pids

NODES = {"A": 2, "B": 1, "C": 1}  # tag -> worker processes
TOTAL_WORKERS = sum(NODES.values())
# Heartbeats every 0.2 s; a peer silent for 10 of them (2 s) is dead. A little more
# slack than the CLI tests: this cluster lives through every test of the module.
LIVENESS = ("--heartbeat-liveness", "10")


# ----------------------------------------------------------------- remote functions
@orion.remote
def node_tag():
    return os.environ.get("NODE_TAG")


@orion.remote
def barrier(directory, parties, timeout=20.0):
    """Arrive at a file barrier; once ``parties`` tasks are there, return this node's tag."""
    with open(os.path.join(directory, f"{uuid.uuid4().hex}.{os.environ.get('NODE_TAG')}"), "w"):
        pass
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(directory))} of {parties} tasks reached the barrier")
        time.sleep(0.005)
    return os.environ.get("NODE_TAG")


@orion.remote
def hold(directory, release, timeout=25.0):
    """Say (by a file) that this attempt started, then wait for ``release`` to exist."""
    with open(os.path.join(directory, f"{uuid.uuid4().hex}.{os.getpid()}.{os.environ.get('NODE_TAG')}"), "w"):
        pass
    deadline = time.monotonic() + timeout
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} did not appear")
        time.sleep(0.005)
    return os.environ.get("NODE_TAG")


@orion.remote
def leaf(i):
    return i * i, {os.environ.get("NODE_TAG")}


@orion.remote
def combine(a, b):
    return a[0] + b[0], a[1] | b[1] | {os.environ.get("NODE_TAG")}


@orion.remote
def tree_sum(lo, hi):
    """Sum of squares in [lo, hi) by recursive tasks that ``get`` inside a task."""
    if hi - lo <= 2:
        return sum(i * i for i in range(lo, hi)), {os.environ.get("NODE_TAG")}
    mid = (lo + hi) // 2
    (left, left_tags), (right, right_tags) = orion.get([tree_sum.remote(lo, mid), tree_sum.remote(mid, hi)])
    return left + right, left_tags | right_tags | {os.environ.get("NODE_TAG")}


@orion.remote
def fan_out(n):
    values = orion.get([leaf.remote(i) for i in range(n)])
    return sum(v for v, _ in values), set().union(*(t for _, t in values)), os.environ.get("NODE_TAG")


@orion.remote
def filled(size):
    return bytes(size)


@orion.remote
def total_length(refs):
    return sum(len(value) for value in orion.get(refs))


@orion.remote
def boxed(refs):
    return refs


# ----------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def cluster():
    cluster = LocalCluster()
    try:
        cluster.start_head(extra=LIVENESS)
        for tag, workers in NODES.items():
            cluster.start_node(cluster.node_id(tag), num_workers=workers, env={"NODE_TAG": tag}, extra=LIVENESS)
        cluster.ids = {tag: cluster.node_id(tag) for tag in NODES}
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def driver(cluster):
    """This process connected to the cluster as a driver, with every worker joined."""
    orion.init(address=cluster.address)
    try:
        wait_for_workers(cluster)
        yield cluster
    finally:
        orion.shutdown()


def workers_by_node():
    return {n["node_id"]: n["workers"] for n in orion.nodes() if n["alive"]}


def wait_for_workers(cluster, timeout=30.0):
    expected = {cluster.ids[tag]: count for tag, count in NODES.items()}
    wait_until(lambda: workers_by_node() == expected, timeout,
               message=lambda: f"workers {workers_by_node()} != {expected}:\n{cluster.head.output()}")


# ----------------------------------------------------------------- tests
@pytest.mark.timeout(40)
def test_all_nodes_register(cluster):
    cluster.wait_registered(list(cluster.ids.values()), timeout=30)
    nodes = {n["node_id"]: n for n in cluster.status()}
    assert set(nodes) == set(cluster.ids.values())
    for tag, count in NODES.items():
        info = nodes[cluster.ids[tag]]
        assert info["alive"] and info["resources"]["CPU"] == count
    for tag, count in NODES.items():
        wait_until(lambda: len(worker_pids(cluster.ids[tag])) == count, 20)


def test_cluster_resources(driver):
    assert orion.cluster_resources()["CPU"] == TOTAL_WORKERS
    assert len(orion.nodes()) == 3


def test_tasks_spread_over_all_nodes(driver, tmp_path):
    # TOTAL_WORKERS tasks that can only finish together: each worker runs one.
    tags = orion.get([barrier.remote(str(tmp_path), TOTAL_WORKERS) for _ in range(TOTAL_WORKERS)], timeout=30)
    assert sorted(tags) == sorted(tag for tag, count in NODES.items() for _ in range(count))
    # Plain tasks land on every node too.
    assert set(orion.get([node_tag.remote() for _ in range(60)], timeout=30)) <= set(NODES)


def test_tree_reduction_across_nodes(driver):
    refs = [leaf.remote(i) for i in range(256)]
    while len(refs) > 1:
        refs = [combine.remote(refs[i], refs[i + 1]) for i in range(0, len(refs), 2)]
    total, tags = orion.get(refs[0], timeout=30)
    assert total == sum(i * i for i in range(256))
    assert tags == set(NODES)  # values crossed between all three nodes on their way to the root


def test_nested_tasks_across_nodes(driver):
    total, tags = orion.get(tree_sum.remote(0, 32), timeout=30)  # 31 tasks, most blocked in get
    assert total == sum(i * i for i in range(32))
    assert len(tags) >= 2
    results = orion.get([fan_out.remote(n) for n in (3, 5, 8, 1)], timeout=30)
    assert [r[0] for r in results] == [sum(i * i for i in range(n)) for n in (3, 5, 8, 1)]
    assert set().union(*(r[1] for r in results)) | {r[2] for r in results} <= set(NODES)


def test_refs_nested_in_arguments_are_freed_on_every_node(driver):
    """A remote driver passes large parts to a reduce as a list of refs: once
    the reduce is done and the driver drops them, every node frees its copies."""
    for _ in range(3):
        parts = [filled.remote(1 << 20) for _ in range(6)]
        assert orion.get(total_length.remote(parts), timeout=30) == 6 << 20
        del parts
    gc.collect()
    orion.get(node_tag.remote(), timeout=30)  # hands the releases over
    wait_until(lambda: sum(n["store_bytes"] for n in orion.nodes()) == 0, 20,
               message=lambda: f"store bytes left: {[n['store_bytes'] for n in orion.nodes()]}")
    # A ref of ours that comes back inside a result after we let go of it is fetched again.
    inner = filled.remote(10)
    box = boxed.remote([inner])
    del inner
    gc.collect()
    orion.get(node_tag.remote(), timeout=30)
    (back,) = orion.get(box, timeout=30)
    assert orion.get(back, timeout=30) == bytes(10)


def test_killed_worker_task_is_retried_and_worker_replaced(driver, tmp_path):
    cluster = driver
    starts, release = tmp_path / "starts", tmp_path / "release"
    starts.mkdir()
    ref = hold.remote(str(starts), str(release))
    first = wait_until(lambda: os.listdir(starts), 20)[0]
    _, pid, tag = first.split(".")
    pid = int(pid)
    node_id = cluster.ids[tag]
    assert pid in worker_pids(node_id)
    os.kill(pid, signal.SIGKILL)
    cluster.nodes[node_id].wait_for_line(r"worker \S+ killed by signal SIGKILL; starting a replacement", 20)
    # The task runs again (on some worker: the attempt count shows it) and finishes.
    wait_until(lambda: len(os.listdir(starts)) >= 2, 20)
    release.touch()
    assert orion.get(ref, timeout=30) in NODES
    # The node started a replacement: the head counts the original number of workers again.
    wait_for_workers(cluster)
    # (Extra workers that earlier nested tasks needed may stay alive, dormant, for reuse.)
    wait_until(lambda: len(worker_pids(node_id)) >= NODES[tag] and pid not in worker_pids(node_id), 20)


@pytest.mark.timeout(45)
def test_paused_node_is_evicted_then_rejoins(driver, tmp_path):
    cluster = driver
    victim_tag = "C"
    victim = cluster.ids[victim_tag]
    victim_node = cluster.nodes[victim]
    starts, release = tmp_path / "starts", tmp_path / "release"
    starts.mkdir()
    # One long task on every worker, so one is running on the victim when it stops.
    held = [hold.remote(str(starts), str(release)) for _ in range(TOTAL_WORKERS)]
    wait_until(lambda: len(os.listdir(starts)) == TOTAL_WORKERS, 20)
    assert any(name.endswith("." + victim_tag) for name in os.listdir(starts))

    victim_workers = worker_pids(victim)
    paused = [victim_node.pid, *victim_workers]
    mark = len(cluster.head.lines)
    kill_pids(paused, signal.SIGSTOP)
    try:
        more = [node_tag.remote() for _ in range(6)]  # submitted while the victim is silent
        cluster.head.wait_for_line(rf"node {victim} evicted", 15, start=mark)
        release.touch()
        results = orion.get(held + more, timeout=30)
        assert victim_tag not in results
        assert set(results) <= set(NODES) - {victim_tag}
        # The victim's task ran a second time elsewhere.
        assert len(os.listdir(starts)) >= TOTAL_WORKERS + 1
        nodes = {n["node_id"]: n for n in orion.nodes()}
        assert nodes[victim]["alive"] is False
        assert orion.cluster_resources()["CPU"] == TOTAL_WORKERS - NODES[victim_tag]
        status = run_orion("status", "--address", cluster.address)
        assert status.returncode == 0, status.stderr
        row = next(line for line in status.stdout.splitlines() if line.startswith(victim))
        assert re.search(r"\bno\b", row)
    finally:
        kill_pids(paused, signal.SIGCONT)

    cluster.head.wait_for_line(rf"node {victim} re-registered", 20, start=mark)
    wait_for_workers(cluster)
    # Its old worker processes were replaced by new ones.
    wait_until(lambda: not any(pid_alive(pid) for pid in victim_workers), 20)
    assert len(worker_pids(victim)) == NODES[victim_tag]
    # It takes tasks again.
    barrier_dir = tmp_path / "barrier"
    barrier_dir.mkdir()
    tags = orion.get([barrier.remote(str(barrier_dir), TOTAL_WORKERS) for _ in range(TOTAL_WORKERS)], timeout=30)
    assert victim_tag in tags
    # `orion status` lists all three nodes, alive.
    status = run_orion("status", "--address", cluster.address, "--json")
    assert status.returncode == 0, status.stderr
    listed = {n["node_id"]: n["alive"] for n in json.loads(status.stdout)["nodes"]}
    assert listed == {node_id: True for node_id in cluster.ids.values()}


def test_node_stopped_mid_task_task_finishes_elsewhere(driver, tmp_path):
    """SIGTERM to a node while its worker runs a task: the node says goodbye and exits 0,
    and the task runs again on another node."""
    cluster = driver
    starts, release = tmp_path / "starts", tmp_path / "release"
    starts.mkdir()
    held = [hold.remote(str(starts), str(release)) for _ in range(TOTAL_WORKERS)]
    wait_until(lambda: len(os.listdir(starts)) == TOTAL_WORKERS, 20)
    # Meanwhile `orion status` shows every CPU in use.
    nodes = {n["node_id"]: n for n in cluster.status()}
    for tag, count in NODES.items():
        info = nodes[cluster.ids[tag]]
        assert (info["running"], info["available"]["CPU"], info["resources"]["CPU"]) == (count, 0, count)
    table = run_orion("status", "--address", cluster.address).stdout.splitlines()
    for tag, count in NODES.items():
        row = next(line for line in table if line.startswith(cluster.ids[tag]))
        assert f"{count}/{count}" in row.split()
    assert f"CPU {TOTAL_WORKERS}/{TOTAL_WORKERS} used, {TOTAL_WORKERS} task(s) running" in table[-1]

    leaving = cluster.ids["B"]
    leaving_workers = worker_pids(leaving)
    cluster.nodes[leaving].send_signal(signal.SIGTERM)
    assert cluster.nodes[leaving].wait(15) == 0
    cluster.head.wait_for_line(rf"node {leaving} said goodbye", 10)
    wait_until(lambda: not any(pid_alive(pid) for pid in leaving_workers), 10)
    release.touch()
    results = orion.get(held, timeout=30)
    assert "B" not in results and len(results) == TOTAL_WORKERS
    assert leaving not in {n["node_id"] for n in orion.nodes() if n["alive"]}


def test_sigterm_stops_everything_cleanly(cluster):
    assert cluster.all_worker_pids(), "the cluster has no worker processes to stop"
    for node_id, proc in cluster.nodes.items():
        proc.send_signal(signal.SIGTERM)
    for node_id, proc in cluster.nodes.items():
        assert proc.wait(15) == 0, proc.output()
    wait_until(lambda: not cluster.all_worker_pids(), 10,
               message=lambda: f"orphan workers {cluster.all_worker_pids()}")
    cluster.head.send_signal(signal.SIGTERM)
    assert cluster.head.wait(10) == 0, cluster.head.output()
    assert "Traceback" not in cluster.head.output()
    cluster.assert_no_orphans()
    assert port_is_free(cluster.port)
