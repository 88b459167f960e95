"""Run every workload for every installed system; print medians, ranges and ratios.

    python benchmarks/run.py [--runs 5] [--workers 2] [--systems orion-inproc,orion-zmq,ray,dask]
                             [--suites tasks,objects]

Each repetition is fresh processes: one for the task workloads (``workloads.py``)
and one for the object-store workloads (``objects.py``, skipped with a note when
numpy is missing). Ray and Dask are measured when they import (``pip install -e
'.[compare]'``); ratios are against Ray when it ran, else against the embedded
Orion cluster.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = [
    ("cold_start_s", "cold start to first result (s)", False),
    ("noop_tasks_per_s", "10,000 no-op tasks (tasks/s)", True),
    ("round_trip_median_us", "submit-and-get round trip, median (us)", False),
    ("round_trip_p99_us", "submit-and-get round trip, p99 (us)", False),
    ("chain_tasks_per_s", "1,000-task chain (tasks/s)", True),
    ("tree_tasks_per_s", "4,096-leaf tree reduction (tasks/s)", True),
    ("nested_tasks_per_s", "100 parents x 10 nested children (tasks/s)", True),
    ("results_100kb_mb_per_s", "1,000 x 100 KB results (MB/s)", True),
    ("cpu_bound_speedup", "2N CPU-bound 0.25 s tasks (speedup of N)", True),
    ("peak_memory_mb", "peak memory, process tree, 10k no-op (MB)", False),
    ("put_read_gb_per_s", "100 MiB array: put + task reads it (GB/s)", True),
    ("return_gb_per_s", "100 MiB array returned to driver (GB/s)", True),
    ("two_nodes_gb_per_s", "100 MiB node A -> task on node B (GB/s)", True),
]
SUITES = {"tasks": "workloads.py", "objects": "objects.py"}


def available(system):
    module = {"ray": "ray", "dask": "distributed"}.get(system)
    return module is None or importlib.util.find_spec(module) is not None


def run_once(system, workers, suites):
    results = {}
    for suite in suites:
        script = os.path.join(HERE, SUITES[suite])
        out = subprocess.run([sys.executable, script, system, "--workers", str(workers)],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"{system} ({SUITES[suite]}) failed:\n{out.stderr[-2000:]}")
        results.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def fmt(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--systems", default="orion-inproc,orion-zmq,ray,dask")
    parser.add_argument("--suites", default=",".join(SUITES),
                        help="tasks (workloads.py), objects (objects.py: large numpy values), or both")
    args = parser.parse_args(argv)
    systems = [s for s in args.systems.split(",") if available(s)]
    suites = [s for s in args.suites.split(",") if s]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from {sorted(SUITES)}")
    notes = []
    if "objects" in suites and importlib.util.find_spec("numpy") is None:
        suites.remove("objects")
        notes.append(f"object-store rows skipped: numpy is not installed for {sys.executable}")
    results = {}
    for system in systems:
        runs = []
        for i in range(args.runs):
            print(f"  {system} run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
            runs.append(run_once(system, args.workers, suites))
        results[system] = runs
        for key in sorted({k for r in runs for k in r if k.endswith("_error")}):
            notes.append(f"{system} {key[:-len('_error')]}: n/a ({runs[-1].get(key) or 'failed'})")
    baseline = "ray" if "ray" in results else "orion-zmq"
    print(f"\nmedians of {args.runs} runs (min-max), {args.workers} workers, {os.cpu_count()} cores; "
          f"ratio = better-is-higher factor vs {baseline}\n")
    header = f"{'workload':44}" + "".join(f"{s:>30}" for s in systems)
    print(header)
    measured = {k for runs in results.values() for r in runs for k in r}
    for key, label, higher_is_better in ROWS:
        if key not in measured:
            continue                    # a suite that did not run
        line = f"{label:44}"
        base_values = [r[key] for r in results.get(baseline, []) if key in r]
        base = statistics.median(base_values) if base_values else None
        for system in systems:
            values = [r[key] for r in results[system] if key in r]
            if not values:
                line += f"{'n/a':>30}"
                continue
            median = statistics.median(values)
            ratio = ""
            if base:
                factor = median / base if higher_is_better else base / median
                ratio = f" x{factor:.1f}"
            line += f"{fmt(median) + ' (' + fmt(min(values)) + '-' + fmt(max(values)) + ')' + ratio:>30}"
        print(line)
    if "two_nodes_gb_per_s" in measured:
        how = {"orion-zmq": "`orion head` + two `orion worker --num-workers 1` processes",
               "ray": "ray.cluster_utils.Cluster", "dask": "two LocalCluster workers"}
        notes.append("two-node row: " + "; ".join(f"{s} is {how[s]}" for s in systems if s in how))
    if notes:
        print()
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
