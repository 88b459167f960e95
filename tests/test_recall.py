"""Recall, end to end on an embedded cluster: tasks that pipelining queued
behind a task that then runs long come back and run on the idle worker,
each exactly once (see "Recall" in ``orion/scheduler/state.py``)."""
from __future__ import annotations

import os

import pytest

import orion
from conftest import touch, wait_for_file

pytestmark = [pytest.mark.timeout(90)]


@orion.remote
def step(index, log, gate=None, pid_file=None):
    """Quick unless given a gate: then it waits for the gate file to appear."""
    if gate is not None:
        touch(pid_file, str(os.getpid()))
        wait_for_file(gate, timeout=60)
    with open(log, "a") as f:
        f.write(f"{index}\n")
    return os.getpid()


def test_tasks_queued_behind_a_long_task_run_elsewhere_exactly_once(tmp_path):
    orion.init(num_workers=2)
    log, gate, pid_file = str(tmp_path / "log"), str(tmp_path / "gate"), str(tmp_path / "pid")
    # A history of quick runs: pipelining queues many of them behind a busy worker.
    assert len(set(orion.get([step.remote(-1, log) for _ in range(200)]))) >= 1
    long = step.remote(0, log, gate, pid_file)
    quick = [step.remote(i, log) for i in range(1, 201)]
    # Without recall, those queued behind the long task would wait for the gate.
    pids = orion.get(quick, timeout=30)
    wait_for_file(pid_file)
    long_pid = int(open(pid_file).read())
    assert long_pid not in pids  # every quick task ran on the other worker
    touch(gate)
    assert orion.get(long, timeout=30) == long_pid
    ran = [int(line) for line in open(log).read().split() if int(line) >= 0]
    assert sorted(ran) == list(range(201))  # each once: none ran both here and there
