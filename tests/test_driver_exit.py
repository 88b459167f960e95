"""A remote driver's objects go with it. A cluster outlives the scripts that use
it: when a driver says goodbye, or is killed and falls silent, the head
releases everything it owned (task results, inline and large puts), as if
every ref of its had died. What another process still holds a ref to stays
until that process lets go."""
from __future__ import annotations

import gc
import json
import pickle
import subprocess
import sys
import textwrap

import pytest

import orion
from helpers_cluster import run_orion, subprocess_env, wait_until

pytestmark = pytest.mark.timeout(90)

DRIVER = textwrap.dedent("""
    import os, pickle, signal, sys
    import numpy as np
    import orion

    orion.init(address=sys.argv[1])

    @orion.remote
    def small(i):
        return i

    @orion.remote
    def big(i):
        return np.full(250_000, float(i))  # 2 MB: kept in the node's store

    refs = [small.remote(i) for i in range(50)] + [big.remote(i) for i in range(3)]
    assert orion.get(refs)[:3] == [0, 1, 2]
    puts = [orion.put(list(range(100))), orion.put(np.zeros(300_000))]  # inline, and served by this driver
    shared = big.remote(7)
    orion.get(shared)
    print(pickle.dumps(shared).hex(), flush=True)  # another process takes a ref to it
    sys.stdin.readline()  # until the test says go
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    orion.shutdown()
    print("bye", flush=True)
""")


@orion.remote
def total(array):
    return float(array.sum())


def store_counts(address):
    result = run_orion("status", "--address", address, "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    return status["object_store_objects"], status["node_store_objects"]


def wait_for_counts(address, expected):
    wait_until(lambda: store_counts(address) == expected, timeout=30,
               message=lambda: f"(head objects, node files) left: {store_counts(address)}, not {expected}")


@pytest.fixture
def driver_process(local_cluster):
    """``start(script, *args)``: a head, one node of one worker, and ``script``
    as a driver in a subprocess (stdin and stdout piped; argv[1] is the
    head's address); killed afterwards if still running."""
    started = []

    def start(script, *args):
        local_cluster.start_head()
        node_id = local_cluster.node_id("a")
        local_cluster.start_node(node_id, num_workers=1)
        local_cluster.wait_registered([node_id])
        started.append(subprocess.Popen([sys.executable, "-c", script, local_cluster.address, *args],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=subprocess_env()))
        return started[-1]

    yield start
    for driver in started:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def let_go(driver, exit_mode):
    """Tell the driver to go on to its end: ``orion.shutdown()``, or SIGKILL."""
    driver.stdin.write("go\n")
    driver.stdin.flush()
    assert driver.wait(timeout=30) == (0 if exit_mode == "goodbye" else -9)


@pytest.mark.parametrize("exit_mode", ["goodbye", "kill"])
def test_what_a_driver_owned_is_freed_when_it_exits_except_what_others_hold(local_cluster, driver_process,
                                                                            exit_mode):
    driver = driver_process(DRIVER, exit_mode)
    shared_hex = driver.stdout.readline().strip()
    assert shared_hex, "the driver printed no ref"
    orion.init(address=local_cluster.address)
    shared = pickle.loads(bytes.fromhex(shared_hex))  # this process now borrows it...
    assert orion.get(total.remote(shared), timeout=30) == 7.0 * 250_000  # ...and the head knows
    orion.get([])  # (a get hands over the release of that result: only the driver's are left)
    assert store_counts(local_cluster.address) == (56, 5)  # the driver's objects, all still there
    let_go(driver, exit_mode)
    # Killed, it is taken for dead after 4 x 5 x 0.2 s without a heartbeat.
    wait_for_counts(local_cluster.address, (1, 1))
    assert float(orion.get(shared, timeout=30).sum()) == 7.0 * 250_000  # what we hold stays
    del shared
    gc.collect()
    orion.get([])  # hands the release over
    wait_for_counts(local_cluster.address, (0, 0))


BUSY_DRIVER = textwrap.dedent("""
    import os, sys, time
    import orion

    orion.init(address=sys.argv[1])

    @orion.remote
    def wait_for(path):
        while not os.path.exists(path):  # (interrupted by a cancel)
            time.sleep(0.02)
        return "released"

    @orion.remote
    def small(i):
        return i

    running = wait_for.remote(sys.argv[3])
    queued = [small.remote(i) for i in range(200)]  # behind it, on the only worker
    print("submitted", flush=True)
    sys.stdin.readline()
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), __import__("signal").SIGKILL)
    orion.shutdown()
""")


@orion.remote
def answer():
    return 42


@pytest.mark.parametrize("exit_mode", ["goodbye", "kill"])
def test_a_departed_drivers_tasks_are_cancelled(local_cluster, driver_process, exit_mode, tmp_path):
    """Nothing else waits for them: they would only keep the cluster busy."""
    driver = driver_process(BUSY_DRIVER, exit_mode, str(tmp_path / "never"))
    assert driver.stdout.readline().strip() == "submitted"
    orion.init(address=local_cluster.address)

    def live_tasks():
        result = run_orion("status", "--address", local_cluster.address, "--json", timeout=30)
        assert result.returncode == 0, result.stderr
        return sum(json.loads(result.stdout)["tasks"].values())

    wait_until(lambda: live_tasks() == 201, timeout=30, message=lambda: f"{live_tasks()} tasks live")
    let_go(driver, exit_mode)
    wait_until(lambda: live_tasks() == 0, timeout=30, message=lambda: f"{live_tasks()} tasks still live")
    assert orion.get(answer.remote(), timeout=30) == 42  # the worker is free: its task was interrupted
    orion.get([])  # (hands over the release of that result)
    wait_for_counts(local_cluster.address, (0, 0))
