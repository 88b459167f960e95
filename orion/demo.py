"""``orion demo``: a small, real map-reduce DAG on an embedded cluster.

Generates ``size`` chunks of pseudo-random numbers in tasks, maps each to its
(count, sum, sum of squares), reduces them pairwise in a tree of tasks, and
checks the mean and variance against a direct computation in the driver.
"""
from __future__ import annotations

import random
import time

import orion

CHUNK = 2000


@orion.remote
def generate(seed):
    rng = random.Random(seed)
    return [rng.random() for _ in range(CHUNK)]


@orion.remote
def summarize(chunk):
    return len(chunk), sum(chunk), sum(x * x for x in chunk)


@orion.remote
def combine(a, b):
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def tree_reduce(refs):
    """Pairwise reduction: log2(n) levels of ``combine`` tasks."""
    levels = 0
    while len(refs) > 1:
        paired = [combine.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
        if len(refs) % 2:
            paired.append(refs[-1])
        refs = paired
        levels += 1
    return refs[0], levels


def run_demo(transport="zmq", num_workers=None, size=256):
    start = time.perf_counter()
    info = orion.init(transport=transport, num_workers=num_workers)
    started = time.perf_counter()
    try:
        chunks = [generate.remote(seed) for seed in range(size)]
        summaries = [summarize.remote(chunk) for chunk in chunks]
        total_ref, levels = tree_reduce(summaries)
        count, total, squares = orion.get(total_ref)
        finished = time.perf_counter()
        mean = total / count
        variance = squares / count - mean * mean
        # Check against the same computation done here, without the cluster.
        expected = [x for seed in range(size) for x in generate._function(seed)]
        exact_mean = sum(expected) / len(expected)
        tasks = 2 * size + (size - 1)
        resources = orion.cluster_resources()
        print(f"Orion demo on {'an embedded cluster' if transport == 'zmq' else 'the in-process runtime'}"
              f" ({info.address or 'no sockets'}, {resources['CPU']:g} CPUs)")
        print(f"  DAG: {size} generate -> {size} summarize -> {size - 1} combine in a {levels}-level tree "
              f"= {tasks} tasks over {count:,} numbers")
        print(f"  mean {mean:.6f} (driver check {exact_mean:.6f}), variance {variance:.6f}")
        print(f"  cluster start {started - start:.3f} s, DAG {finished - started:.3f} s "
              f"({tasks / (finished - started):,.0f} tasks/s)")
        ok = abs(mean - exact_mean) < 1e-9
        print("  result: " + ("correct" if ok else "WRONG"))
        return 0 if ok else 1
    finally:
        orion.shutdown()
