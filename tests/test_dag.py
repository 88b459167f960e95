"""A 10,000-task DAG mixing fan-out, chains and a tree reduction, with a known answer."""
from __future__ import annotations

import pytest

import orion
from conftest import touch, wait_for_file, wait_until


@orion.remote
def source():
    return 1


@orion.remote
def start(root, i):
    return root + i


@orion.remote
def step(previous, root):
    return previous + root


@orion.remote
def add(a, b):
    return a + b


@orion.remote
def step_or_fail(previous, root, fail):
    if fail:
        raise ValueError(f"chain broke at {previous}")
    return previous + root


@orion.remote
def gated_step(previous, gate, started):
    touch(started)
    wait_for_file(gate)
    return previous + 1


def tree_reduce(refs):
    """Pairwise ``add`` until one ref is left; len(refs) - 1 tasks."""
    submitted = 0
    while len(refs) > 1:
        paired = [add.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
        submitted += len(paired)
        if len(refs) % 2:
            paired.append(refs[-1])
        refs = paired
    return refs[0], submitted


def build(width, length, root=None):
    """source -> fan-out to ``width`` chains of ``length`` steps (each also reads
    the root: diamonds) -> tree reduction. Returns (total_ref, chain_ends, tasks)."""
    tasks = 0
    if root is None:
        root = source.remote()
        tasks += 1
    ends = []
    for i in range(width):
        ref = start.remote(root, i)
        for _ in range(length):
            ref = step.remote(ref, root)
        ends.append(ref)
        tasks += 1 + length
    total, reduced = tree_reduce(ends)
    return total, ends, tasks + reduced


def expected_total(width, length, root_value=1):
    return sum(root_value + i + length * root_value for i in range(width))


@pytest.mark.timeout(60)
def test_10000_task_dag(cluster):
    width, length = 100, 98
    total, ends, tasks = build(width, length)
    assert tasks == 10_000
    # Everything is submitted before anything is awaited; the answer is known.
    assert orion.get(total, timeout=50) == expected_total(width, length) == 14_850
    assert orion.get(ends) == [1 + i + length for i in range(width)]
    ready, not_ready = orion.wait(ends, num_returns=width, timeout=10)
    assert len(ready) == width and not_ready == []
    wait_until(lambda: orion.nodes()[0]["running"] == 0)


@pytest.mark.timeout(30)
def test_dag_on_put_root_with_one_worker(make_cluster):
    make_cluster(num_workers=1)
    total, _, tasks = build(10, 20, root=orion.put(3))
    assert tasks == 10 * 21 + 9
    assert orion.get(total) == expected_total(10, 20, root_value=3)


@pytest.mark.timeout(30)
def test_dag_with_a_failing_chain(cluster):
    width, length, broken = 20, 10, 7
    root = source.remote()
    ends = []
    for i in range(width):
        ref = start.remote(root, i)
        for j in range(length):
            ref = step_or_fail.remote(ref, root, i == broken and j == length // 2)
        ends.append(ref)
    total, _ = tree_reduce(ends)
    with pytest.raises(ValueError, match="chain broke") as info:
        orion.get(total)
    assert isinstance(info.value, orion.TaskError)
    with pytest.raises(ValueError) as chain_info:
        orion.get(ends[broken])
    assert str(chain_info.value) == str(info.value)
    others = [e for i, e in enumerate(ends) if i != broken]
    assert orion.get(others) == [1 + i + length for i in range(width) if i != broken]


@pytest.mark.timeout(30)
def test_dag_with_a_cancelled_chain(cluster, tmp_path):
    gate, started = tmp_path / "gate", tmp_path / "started"
    root = source.remote()
    held = gated_step.remote(start.remote(root, 0), str(gate), str(started))
    chain = held
    for _ in range(5):
        chain = step.remote(chain, root)
    other = step.remote(start.remote(root, 1), root)
    total = add.remote(chain, other)
    wait_until(started.exists)
    orion.cancel(held)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(total, timeout=20)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(chain, timeout=20)
    assert orion.get(other) == 3
    touch(gate)
