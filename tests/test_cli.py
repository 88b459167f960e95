"""The ``orion`` command line and the cluster scripts, as real subprocesses on localhost."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers_cluster import (REPO_ROOT, LocalCluster, OrionProcess, free_port, kill_pids, pid_alive, port_is_free,
                             run_orion, subprocess_env, wait_until, worker_pids)


@pytest.fixture
def local_cluster():
    cluster = LocalCluster()
    try:
        yield cluster
    finally:
        cluster.cleanup()


# ----------------------------------------------------------------- orion head
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_head_prints_address_first_and_exits_cleanly_on_signal(local_cluster, sig):
    port = free_port()
    head = local_cluster.start_head(port)
    assert head.first_line() == f"tcp://127.0.0.1:{port}"
    assert not port_is_free(port)  # it is listening
    # It answers: a status query works against it.
    assert local_cluster.status() == []
    head.send_signal(sig)
    assert head.wait(10) == 0, head.output()
    assert "Traceback" not in head.output()
    local_cluster.assert_no_orphans()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_right_after_startup_still_exits_cleanly(sig):
    """Scripts signal the head as soon as it printed its address (and a node as soon as it
    said it is starting): the signal must not find the default handler still in place."""
    for _ in range(3):
        port = free_port()
        head = OrionProcess("head", "--port", port, name="orion head")
        node = OrionProcess("worker", "--address", f"tcp://127.0.0.1:{port}", "--num-workers", 1,
                            "--node-id", f"early-signal-{port}", name="orion worker")
        try:
            assert head.first_line() == f"tcp://127.0.0.1:{port}"
            head.send_signal(sig)
            node.wait_for_line("starting", 15)
            node.send_signal(sig)
            assert head.wait(10) == 0, head.output()
            assert node.wait(10) == 0, node.output()
            assert "Traceback" not in head.output() + node.output()
            wait_until(lambda: not worker_pids(f"early-signal-{port}"), 10)
        finally:
            head.close()
            node.close()


def test_head_port_in_use_fails_clearly(local_cluster):
    head = local_cluster.start_head()
    second = OrionProcess("head", "--port", local_cluster.port, name="second head")
    try:
        assert second.wait(15) == 1
        assert "cannot bind" in second.output()
    finally:
        second.close()
    assert head.alive()


# ----------------------------------------------------------------- orion worker + status
def test_worker_registers_shows_in_status_and_exits_cleanly(local_cluster):
    cluster = local_cluster
    head = cluster.start_head()
    node_id = cluster.node_id("X")
    node = cluster.start_node(node_id, num_workers=2)
    line = head.wait_for_line(rf"node {node_id} registered", 20)
    assert "registered" in line and node_id in line

    # The node's two worker processes exist and say hello (the head counts them).
    wait_until(lambda: len(worker_pids(node_id)) == 2, 20,
               message=lambda: f"worker processes of {node_id}: {worker_pids(node_id)}")
    nodes = wait_until(lambda: [n for n in cluster.status() if n.get("workers") == 2], 20)
    [info] = nodes
    assert info["node_id"] == node_id
    assert info["alive"] is True
    assert info["resources"]["CPU"] == 2
    assert info["available"]["CPU"] == 2
    assert info["running"] == 0

    # The human-readable table.
    result = run_orion("status", "--address", cluster.address)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert cluster.address in text
    header = next(line for line in text.splitlines() if line.startswith("NODE"))
    for column in ("ADDRESS", "ALIVE", "CPU USED/TOTAL", "RUNNING"):
        assert column in header
    row = next(line for line in text.splitlines() if line.startswith(node_id))
    assert re.search(r"\byes\b", row) and "0/2" in row
    total = text.strip().splitlines()[-1]
    assert total.startswith("total:") and "1 alive node" in total and "CPU 0/2" in total

    # ORION_ADDRESS is the default address of `orion status`.
    result = run_orion("status", "--json", env=subprocess_env(ORION_ADDRESS=cluster.address))
    assert result.returncode == 0, result.stderr
    assert [n["node_id"] for n in json.loads(result.stdout)["nodes"]] == [node_id]

    # SIGTERM: the node says goodbye, stops its workers and exits 0.
    workers = worker_pids(node_id)
    node.send_signal(signal.SIGTERM)
    assert node.wait(15) == 0, node.output()
    wait_until(lambda: not worker_pids(node_id), 10, message=f"orphan workers {worker_pids(node_id)}")
    head.wait_for_line(rf"node {node_id} said goodbye", 10)
    wait_until(lambda: node_id not in cluster.alive_nodes(), 10)
    assert not any(pid_alive(pid) for pid in workers)

    head.send_signal(signal.SIGINT)
    assert head.wait(10) == 0, head.output()
    cluster.assert_no_orphans()


def test_worker_sigint_exits_cleanly(local_cluster):
    cluster = local_cluster
    cluster.start_head()
    node_id = cluster.node_id("int")
    node = cluster.start_node(node_id, num_workers=1)
    cluster.wait_registered([node_id])
    wait_until(lambda: worker_pids(node_id), 20)
    node.send_signal(signal.SIGINT)
    assert node.wait(15) == 0, node.output()
    wait_until(lambda: not worker_pids(node_id), 10)


def test_worker_started_before_head_retries_and_joins(local_cluster):
    cluster = local_cluster
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    node_id = cluster.node_id("early")
    node = cluster.start_node(node_id, num_workers=1, address=address)
    # It notices the head is silent and retries (without exiting).
    node.wait_for_line(r"silent .* reconnecting", 20)
    assert node.alive()
    cluster.start_head(port)
    assert cluster.address == address
    cluster.wait_registered([node_id], timeout=25)
    wait_until(lambda: worker_pids(node_id), 20)
    # The head stops first (with the node connected): it exits 0, the node keeps retrying.
    cluster.head.send_signal(signal.SIGTERM)
    assert cluster.head.wait(10) == 0, cluster.head.output()
    wait_until(lambda: port_is_free(port), 10)
    assert node.alive()
    node.send_signal(signal.SIGTERM)
    assert node.wait(15) == 0, node.output()
    cluster.assert_no_orphans()


def test_worker_exits_cleanly_while_head_is_down(local_cluster):
    node = local_cluster.start_node(local_cluster.node_id("lonely"), address=f"tcp://127.0.0.1:{free_port()}")
    node.wait_for_line(r"silent .* reconnecting", 20)
    node.send_signal(signal.SIGTERM)
    assert node.wait(15) == 0, node.output()
    assert "Traceback" not in node.output()


def test_killed_node_leaves_no_orphans_and_is_evicted(local_cluster):
    cluster = local_cluster
    head = cluster.start_head()
    node_id = cluster.node_id("doomed")
    node = cluster.start_node(node_id, num_workers=2)
    cluster.wait_registered([node_id])
    wait_until(lambda: len(worker_pids(node_id)) == 2, 20)
    mark = len(head.lines)
    node.proc.kill()  # SIGKILL: no goodbye, no clean-up code runs
    assert node.wait(10) == -signal.SIGKILL
    # Its worker processes notice (their stdin pipe from the node closes) and exit.
    wait_until(lambda: not worker_pids(node_id), 10, message=lambda: f"orphans: {worker_pids(node_id)}")
    # The head notices the silence and evicts it.
    head.wait_for_line(rf"node {node_id} evicted", 15, start=mark)
    assert [n["alive"] for n in cluster.status() if n["node_id"] == node_id] == [False]


def test_node_rejoins_a_restarted_head(local_cluster):
    cluster = local_cluster
    old_head = cluster.start_head()
    port = cluster.port
    node_id = cluster.node_id("loyal")
    node = cluster.start_node(node_id, num_workers=1)
    cluster.wait_registered([node_id])
    wait_until(lambda: len(worker_pids(node_id)) == 1, 20)
    old_workers = worker_pids(node_id)
    old_head.proc.kill()
    assert old_head.wait(10) == -signal.SIGKILL
    cluster.start_head(port)  # same port, a new head that has never heard of the node
    cluster.wait_registered([node_id], timeout=30)
    # The node restarted its worker processes for the new head, which counts them.
    wait_until(lambda: [n["workers"] for n in cluster.status()] == [1], 20)
    wait_until(lambda: not any(pid in worker_pids(node_id) for pid in old_workers), 10)
    assert node.alive()
    node.send_signal(signal.SIGTERM)
    assert node.wait(15) == 0, node.output()
    cluster.head.send_signal(signal.SIGTERM)
    assert cluster.head.wait(10) == 0
    cluster.assert_no_orphans()


def test_status_without_head_fails_clearly():
    port = free_port()
    start = time.monotonic()
    result = run_orion("status", "--address", f"tcp://127.0.0.1:{port}", timeout=30)
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert "no Orion head answered" in result.stderr and str(port) in result.stderr
    assert result.stdout == ""
    assert elapsed < 15


@pytest.mark.parametrize("command", [
    ["worker", "--address", "notanaddress"],
    ["worker", "--address", "tcp://127.0.0.1"],
    ["worker", "--address", "tcp://127.0.0.1:0"],
    ["status", "--address", "notanaddress"],
])
def test_bad_address_fails_clearly(command):
    result = run_orion(*command, timeout=30)
    assert result.returncode != 0
    assert "tcp://HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [
    ["worker", "--address", "tcp://127.0.0.1:6380", "--num-workers", "0"],
    ["worker", "--address", "tcp://127.0.0.1:6380", "--resources", "not json"],
    ["worker", "--address", "tcp://127.0.0.1:6380", "--resources", '{"GPU": -1}'],
    ["worker", "--address", "tcp://127.0.0.1:6380", "--resources", "[1, 2]"],
])
def test_bad_worker_arguments_fail_clearly(command):
    result = run_orion(*command, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("orion worker:")
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------- orion demo
@pytest.mark.parametrize("args", [["--transport", "inproc"], []], ids=["inproc", "zmq"])
def test_demo(args):
    result = run_orion("demo", *args, timeout=50)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "correct" in result.stdout
    if not args:  # the embedded cluster leaves no worker processes behind
        address = re.search(r"tcp://127\.0\.0\.1:\d+", result.stdout).group(0)
        wait_until(lambda: not worker_pids(address=address), 10)


# ----------------------------------------------------------------- scripts
@pytest.mark.timeout(50)
def test_start_and_stop_cluster_scripts(tmp_path):
    port = free_port()
    state = tmp_path / "state"
    env = subprocess_env(ORION_CLUSTER_DIR=state, ORION_HEARTBEAT_INTERVAL=0.2, PYTHON=sys.executable)
    address = f"tcp://127.0.0.1:{port}"
    scripts = REPO_ROOT / "scripts"
    pids = []
    try:
        start = subprocess.run(["bash", str(scripts / "start-cluster.sh"), "2", str(port)], capture_output=True,
                               text=True, timeout=40, env=env, stdin=subprocess.DEVNULL)
        pids = [int(f.read_text()) for f in state.glob("*.pid")] if state.exists() else []
        assert start.returncode == 0, start.stdout + start.stderr
        assert start.stdout.strip().splitlines()[-1] == address
        assert len(pids) == 3
        result = run_orion("status", "--address", address, "--json")
        assert result.returncode == 0, result.stderr
        nodes = json.loads(result.stdout)["nodes"]
        assert sorted(n["node_id"] for n in nodes if n["alive"]) == ["node-1", "node-2"]
        wait_until(lambda: len(worker_pids(address=address)) == 2, 20)

        stop = subprocess.run(["bash", str(scripts / "stop-cluster.sh"), str(port)], capture_output=True,
                              text=True, timeout=40, env=env, stdin=subprocess.DEVNULL)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        wait_until(lambda: not worker_pids(address=address), 10,
                   message=lambda: f"orphan workers: {worker_pids(address=address)}")
        for pid in pids:
            wait_until(lambda: not pid_alive(pid), 10, message=f"process {pid} still running")
        wait_until(lambda: port_is_free(port), 10, message=f"port {port} still in use")
        assert not state.exists()
    finally:  # whatever failed, leave nothing running
        kill_pids([pid for pid in pids if pid_alive(pid)])
        kill_pids(worker_pids(address=address))


def test_start_cluster_fails_clearly_when_the_port_is_taken(local_cluster, tmp_path):
    local_cluster.start_head()
    state = tmp_path / "state"
    env = subprocess_env(ORION_CLUSTER_DIR=state, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "start-cluster.sh"), "1", str(local_cluster.port)],
                            capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "head failed to start" in result.stderr and "cannot bind" in result.stderr
    stop = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "stop-cluster.sh")], capture_output=True, text=True,
                          timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert stop.returncode == 0
    assert local_cluster.head.alive()  # the head that owned the port was not touched
    assert not worker_pids(address=local_cluster.address)
