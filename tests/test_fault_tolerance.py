"""Fault tolerance over real processes: a head that restarts under its drivers,
a node killed with SIGKILL, get/wait timeouts while no head answers."""
from __future__ import annotations

import signal
import time

import pytest

import orion
from helpers_cluster import run_orion, wait_until, worker_pids

pytestmark = pytest.mark.timeout(90)


@orion.remote
def slow_square(x, seconds=0.1):
    time.sleep(seconds)
    return x * x


@orion.remote
def inc(x):
    return x + 1


@pytest.fixture
def cluster(local_cluster):
    """A head and nodes started through the CLI (conftest's ``local_cluster``)."""
    return local_cluster


def start(cluster, nodes=2, workers=1):
    cluster.start_head()
    ids = [cluster.node_id(f"ft{i}") for i in range(nodes)]
    for node_id in ids:
        cluster.start_node(node_id, num_workers=workers)
    cluster.wait_registered(ids)
    orion.init(address=cluster.address)
    return ids


def test_head_restart_drivers_resubmit_and_get_returns_right_results(cluster):
    node_ids = start(cluster)
    base = orion.put(10)
    squares = [slow_square.remote(i, 0.1) for i in range(30)]
    chain = inc.remote(base)
    for _ in range(19):
        chain = inc.remote(chain)
    assert orion.get(squares[0], timeout=30) == 0  # work is under way

    cluster.head.send_signal(signal.SIGKILL)
    cluster.head.wait(timeout=10)
    # While no head answers: status says so, get keeps waiting or times out.
    result = run_orion("status", "--address", cluster.address, "--timeout", "1")
    assert result.returncode == 1 and "no Orion head answered" in result.stderr
    with pytest.raises(orion.GetTimeoutError):
        orion.get(squares[-1], timeout=0.3)

    cluster.start_head(port=cluster.port)  # a new head on the same address
    assert orion.get(squares, timeout=60) == [i * i for i in range(30)]
    assert orion.get(chain, timeout=60) == 30
    cluster.wait_registered(node_ids)  # the nodes came back too
    assert orion.get(slow_square.remote(7, 0), timeout=30) == 49


def test_node_killed_leaves_totals_quickly_and_its_tasks_finish_elsewhere(cluster):
    node_ids = start(cluster, nodes=2, workers=1)
    assert orion.cluster_resources()["CPU"] == 2
    victim = node_ids[0]
    refs = [slow_square.remote(i, 0.3) for i in range(8)]
    wait_until(lambda: any(n["running"] for n in orion.nodes() if n["node_id"] == victim), 20)
    killed_at = time.monotonic()
    cluster.nodes[victim].kill_group()  # SIGKILL: the node and (through its pipe) its workers
    wait_until(lambda: orion.cluster_resources()["CPU"] == 1, 10,
               message=lambda: f"CPU total still {orion.cluster_resources()}")
    # Noticed from the dropped connection, well before the heartbeat deadline would pass twice.
    assert time.monotonic() - killed_at < 5
    assert orion.get(refs, timeout=60) == [i * i for i in range(8)]
    wait_until(lambda: not worker_pids(victim), 10, message="the killed node's workers outlived it")


def test_wait_timeout_leaves_nothing_behind_and_can_be_retried(cluster):
    start(cluster, nodes=1)
    ref = slow_square.remote(3, 0.5)
    ready, not_ready = orion.wait([ref], num_returns=1, timeout=0.05)
    assert ready == [] and not_ready == [ref]
    with pytest.raises(orion.GetTimeoutError):
        orion.get(ref, timeout=0.05)
    assert orion.get(ref, timeout=30) == 9
    assert orion.wait([ref], timeout=0) == ([ref], [])


def test_worker_crash_error_names_task_node_and_signal(cluster):
    start(cluster, nodes=1)

    @orion.remote(max_retries=1, name="doomed")
    def doomed():
        import os
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(orion.WorkerCrashedError) as info:
        orion.get(doomed.remote(), timeout=60)
    message = str(info.value)
    assert "doomed" in message and "SIGKILL" in message and cluster.node_id("ft0") in message
    assert "2 attempt(s)" in message


def test_segfault_is_retried_then_reported(cluster, tmp_path):
    start(cluster, nodes=1)

    @orion.remote(max_retries=2)
    def segfault_once(marker):
        import ctypes
        import os
        if not os.path.exists(marker):
            open(marker, "w").close()
            ctypes.string_at(0)  # SIGSEGV
        return "survived"

    @orion.remote(max_retries=1)
    def segfault_always():
        import ctypes
        ctypes.string_at(0)

    assert orion.get(segfault_once.remote(str(tmp_path / "m")), timeout=60) == "survived"
    with pytest.raises(orion.WorkerCrashedError, match="SIGSEGV"):
        orion.get(segfault_always.remote(), timeout=60)


def test_cancel_a_task_queued_behind_another_on_a_remote_worker(cluster, tmp_path):
    start(cluster, nodes=1, workers=1)

    @orion.remote
    def mark(path, seconds):
        time.sleep(seconds)
        open(path, "w").close()
        return path

    long = mark.remote(str(tmp_path / "long"), 1.0)
    queued = [mark.remote(str(tmp_path / f"q{i}"), 0) for i in range(4)]
    # With a backlog, the next task is already queued on the busy worker.
    wait_until(lambda: orion.nodes()[0]["running"] >= 1, 20)
    for ref in queued:
        orion.cancel(ref)
    for ref in queued:
        with pytest.raises(orion.TaskCancelledError):
            orion.get(ref, timeout=30)
    assert orion.get(long, timeout=30).endswith("long")
    assert not any((tmp_path / f"q{i}").exists() for i in range(4))  # none of them ran
