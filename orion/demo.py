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
        where = "an embedded cluster" if transport == "zmq" else "the in-process runtime"
        resources = orion.cluster_resources()
        print(f"Orion demo on {where} ({info.address or 'no sockets'}, {resources['CPU']:g} CPUs)", flush=True)
        # Map: each chunk is generated and summarized by tasks; the bar follows
        # the summaries as they complete (a bar only on a terminal).
        summaries = [summarize.remote(generate.remote(seed)) for seed in range(size)]
        for _ in orion.progress(summaries, desc="map"):
            pass
        mapped = time.perf_counter()
        # Reduce: a tree of combine tasks over the summaries.
        total_ref, levels = tree_reduce(summaries)
        count, total, squares = orion.get(total_ref)
        finished = time.perf_counter()
        mean = total / count
        variance = squares / count - mean * mean
        # Check against the same computation done here, without the cluster.
        expected = [x for seed in range(size) for x in generate._function(seed)]
        exact_mean = sum(expected) / len(expected)
        exact_variance = sum(x * x for x in expected) / len(expected) - exact_mean * exact_mean
        ok = abs(mean - exact_mean) < 1e-9 and abs(variance - exact_variance) < 1e-9
        tasks = 2 * size + (size - 1)
        nodes = [n for n in orion.nodes() if n["alive"]]
        elapsed = finished - started
        rows = [
            ("tasks", f"{tasks:,} ({size} generate, {size} summarize, {size - 1} combine in a {levels}-level "
                      f"tree)"),
            ("workers", f"{resources['CPU']:g} on {len(nodes)} node(s)"),
            ("data", f"{count:,} numbers"),
            ("time", f"cluster start {started - start:.3f} s, map {mapped - started:.3f} s, "
                     f"reduce {finished - mapped:.3f} s"),
            ("throughput", f"{tasks / elapsed:,.0f} tasks/s, {count / elapsed:,.0f} numbers/s"),
            ("mean", f"{mean:.6f} (driver check {exact_mean:.6f})"),
            ("variance", f"{variance:.6f} (driver check {exact_variance:.6f})"),
            ("result", "correct" if ok else "WRONG"),
        ]
        width = max(len(name) for name, _ in rows)
        print()
        for name, value in rows:
            print(f"  {name:<{width}}  {value}")
        if hasattr(orion, "timeline"):
            _write_timeline()
        return 0 if ok else 1
    finally:
        orion.shutdown()


def _write_timeline():
    """The tasks just run, as a Chrome trace in a temporary file (best effort)."""
    import os
    import tempfile

    fd, path = tempfile.mkstemp(prefix="orion-demo-timeline-", suffix=".json")
    os.close(fd)
    try:
        orion.timeline(path)
    except Exception as exc:  # the demo's result does not depend on it
        os.unlink(path)
        print(f"  (no timeline: {type(exc).__name__}: {exc})")
        return
    print(f"\n  timeline: {path} (open it in ui.perfetto.dev or chrome://tracing)")
