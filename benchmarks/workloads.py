"""One benchmark session: start a system, run every workload once, print JSON.

    python benchmarks/workloads.py orion-zmq|orion-inproc|ray|dask [--workers 2]

Run by ``benchmarks/run.py`` in a fresh process per repetition, so cold start
is real and one run cannot warm the next.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

NOOP_TASKS = 10_000
CHAIN = 1_000
ROUND_TRIPS = 1_000
TREE_LEAVES = 4_096


def noop():
    return None


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def one():
    return 1


def payload_100kb(i):
    return bytes(100 * 1024)


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def parent(n_children):
    """Submit children from inside a task and wait for them (dynamic graph)."""
    system = _SYSTEM
    return sum(system.get([system.submit(system.one) for _ in range(n_children)]))


_SYSTEM = None  # the system under test, for tasks that submit tasks (set in each process)


def tree_rss_mb(root_pid):
    """Resident memory of a process and all its descendants (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                total += int(f.read().split("VmRSS:")[1].split()[0])
        except (OSError, IndexError):
            pass
        stack.extend(children.get(pid, []))
    return total / 1024


class PeakMemory(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, tree_rss_mb(os.getpid()))


class Orion:
    def __init__(self, transport, workers):
        import orion

        self.orion = orion
        self.start = time.perf_counter()
        orion.init(transport=transport, num_workers=workers)
        self.noop = orion.remote(noop)
        self.inc = orion.remote(inc)
        self.add = orion.remote(add)
        self.one = orion.remote(one)
        self.payload = orion.remote(payload_100kb)
        self.spin = orion.remote(spin)
        self.parent = orion.remote(parent)
        self.get = orion.get
        self.put = orion.put

    def submit(self, fn, *args):
        return fn.remote(*args)

    def close(self):
        self.orion.shutdown()


class Ray:
    def __init__(self, transport, workers):
        import ray

        self.ray = ray
        self.start = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        self.noop = ray.remote(noop)
        self.inc = ray.remote(inc)
        self.add = ray.remote(add)
        self.one = ray.remote(one)
        self.payload = ray.remote(payload_100kb)
        self.spin = ray.remote(spin)
        self.parent = ray.remote(parent)
        self.get = ray.get
        self.put = ray.put

    def submit(self, fn, *args):
        return fn.remote(*args)

    def close(self):
        self.ray.shutdown()


class Dask:
    def __init__(self, transport, workers):
        from dask.distributed import Client, LocalCluster

        self.start = time.perf_counter()
        self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)
        self.noop, self.inc, self.add, self.one = noop, inc, add, one
        self.payload, self.spin, self.parent = payload_100kb, spin, None  # no nested tasks here
        self.get = self.client.gather
        self.put = lambda value: self.client.scatter(value)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def close(self):
        self.client.close()
        self.cluster.close()


SYSTEMS = {
    "orion-zmq": lambda w: Orion("zmq", w),
    "orion-inproc": lambda w: Orion("inproc", w),
    "ray": lambda w: Ray(None, w),
    "dask": lambda w: Dask(None, w),
}


def measure(system_name, workers):
    global _SYSTEM
    memory = PeakMemory()
    memory.start()
    s = _SYSTEM = SYSTEMS[system_name](workers)
    results = {}
    s.get(s.submit(s.one))
    results["cold_start_s"] = time.perf_counter() - s.start

    t = time.perf_counter()
    s.get([s.submit(s.noop) for _ in range(NOOP_TASKS)])
    results["noop_tasks_per_s"] = NOOP_TASKS / (time.perf_counter() - t)
    memory.stop.set()
    memory.join()
    results["peak_memory_mb"] = memory.peak

    samples = []
    for _ in range(ROUND_TRIPS):
        t = time.perf_counter()
        s.get(s.submit(s.one))
        samples.append(time.perf_counter() - t)
    samples.sort()
    results["round_trip_median_us"] = statistics.median(samples) * 1e6
    results["round_trip_p99_us"] = samples[int(len(samples) * 0.99) - 1] * 1e6

    t = time.perf_counter()
    ref = s.submit(s.inc, 0)
    for _ in range(CHAIN - 1):
        ref = s.submit(s.inc, ref)
    assert s.get(ref) == CHAIN
    results["chain_tasks_per_s"] = CHAIN / (time.perf_counter() - t)

    t = time.perf_counter()
    level = [s.submit(s.one) for _ in range(TREE_LEAVES)]
    tasks = len(level)
    while len(level) > 1:
        level = [s.submit(s.add, level[i], level[i + 1]) for i in range(0, len(level), 2)]
        tasks += len(level)
    assert s.get(level[0]) == TREE_LEAVES
    results["tree_tasks_per_s"] = tasks / (time.perf_counter() - t)

    if s.parent is not None:
        t = time.perf_counter()
        assert sum(s.get([s.submit(s.parent, 10) for _ in range(100)])) == 1000
        results["nested_tasks_per_s"] = 1100 / (time.perf_counter() - t)

    t = time.perf_counter()
    values = s.get([s.submit(s.payload, i) for i in range(1000)])
    assert sum(len(v) for v in values) == 1000 * 100 * 1024
    results["results_100kb_mb_per_s"] = 100 * 1024 * 1000 / 2**20 / (time.perf_counter() - t)

    t = time.perf_counter()
    s.get([s.submit(s.spin, 0.25) for _ in range(2 * workers)])
    results["cpu_bound_speedup"] = 2 * workers * 0.25 / (time.perf_counter() - t)
    s.close()
    return results


def run_cli(systems, measure_one):
    """``SCRIPT SYSTEM [--workers N]``: measure once, print the results as JSON
    (run.py runs each repetition as a fresh process; objects.py shares this)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=sorted(systems))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    json.dump(measure_one(args.system, args.workers), sys.stdout)


if __name__ == "__main__":
    run_cli(SYSTEMS, measure)
