"""``orion status``: running and queued tasks per node, object store, ``--watch``."""
from __future__ import annotations

import json
import signal

import pytest

import orion

from conftest import wait_for_file
from helpers_cluster import OrionProcess, free_port, run_orion, wait_until

pytestmark = pytest.mark.timeout(90)


@orion.remote
def hold(release, timeout=30.0):
    wait_for_file(release, timeout)
    return "released"


@orion.remote
def blob(size):
    return b"x" * size


def status_json(address):
    result = run_orion("status", "--address", address, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_shows_running_and_queued_tasks_and_the_object_store(local_cluster, tmp_path):
    local_cluster.start_head()
    node_id = local_cluster.node_id("s")
    local_cluster.start_node(node_id, num_workers=1)
    local_cluster.wait_registered([node_id])
    orion.init(address=local_cluster.address)
    big = blob.remote(200_000)
    assert len(orion.get(big)) == 200_000  # kept while we keep the ref

    release = tmp_path / "release"
    refs = [hold.remote(str(release)) for _ in range(3)]

    def busy():
        status = status_json(local_cluster.address)
        (node,) = status["nodes"]
        # One runs; with a backlog one more waits on the busy worker (pipelining), one in the queue.
        return status if node["running"] == 1 and node["queued"] == 1 and status["queued"] == 2 else None

    status = wait_until(busy, 20)
    (node,) = status["nodes"]
    assert node["node_id"] == node_id and node["alive"] and node["heartbeat_age"] is not None
    assert status["running"] == 1
    assert status["tasks"] == {"pending": 0, "ready": 1, "assigned": 1, "running": 1}
    assert status["waiting_for_inputs"] == 0
    # 200 KB is over the inline limit: it stays in the node's store, the head only lists it.
    assert status["node_store_bytes"] >= 200_000 and status["node_store_objects"] >= 1
    assert status["object_store_objects"] >= 1
    assert 0 <= status["heartbeat_lateness"] < 10
    assert status["totals"]["submitted"] == 4

    table = run_orion("status", "--address", local_cluster.address)
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[1].split()
    assert header[:6] == ["NODE", "ADDRESS", "ALIVE", "CPU", "USED/TOTAL", "RUNNING"] and "QUEUED" in header
    row = table.stdout.splitlines()[2].split()
    assert row[0] == node_id and row[4:6] == ["1", "1"]  # running, queued
    total = table.stdout.strip().splitlines()[-1]
    assert total.startswith("total:") and "2 queued" in total and "object store " in total and "KiB" in total

    release.touch()
    assert orion.get(refs) == ["released"] * 3
    status = wait_until(lambda: (s := status_json(local_cluster.address))["running"] == 0 and s, 15)
    assert status["queued"] == 0 and status["nodes"][0]["queued"] == 0


def test_status_watch_redraws_until_ctrl_c(local_cluster):
    local_cluster.start_head()
    watch = OrionProcess("status", "--address", local_cluster.address, "--watch", "0.2", name="orion status --watch")
    try:
        wait_until(lambda: watch.count_lines(r"\x1b\[H\x1b\[2Jhead: ") >= 2, 15,
                   message=lambda: f"no two redraws:\n{watch.output()!r}")
        assert watch.alive()
        assert "NODE" in watch.output() and "Ctrl-C to stop" in watch.output()
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 0, watch.output()
        assert "Traceback" not in watch.output()
    finally:
        watch.close()


def test_status_watch_json(local_cluster):
    local_cluster.start_head()
    watch = OrionProcess("status", "--address", local_cluster.address, "--watch", "0.2", "--json")
    try:
        wait_until(lambda: watch.count_lines(r'"object_store_bytes"') >= 2, 15)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 0, watch.output()
    finally:
        watch.close()


def test_status_without_a_head_fails_clearly():
    address = f"tcp://127.0.0.1:{free_port()}"
    for extra in ([], ["--watch", "0.2"]):
        result = run_orion("status", "--address", address, "--timeout", "0.5", *extra)
        assert result.returncode == 1
        assert "no Orion head answered" in result.stderr


def test_status_watch_needs_a_positive_interval():
    result = run_orion("status", "--watch", "0")
    assert result.returncode == 2 and "--watch" in result.stderr
