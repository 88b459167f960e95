"""How throughput scales with the number of worker processes.

    python benchmarks/scaling.py [--workers 16,8,4,2,1] [--runs 3]
                                 [--systems orion-zmq,orion-head,pool,dask] [--jsonl FILE]
    python benchmarks/scaling.py --table FILE     # the table of an earlier --jsonl

For each worker count and system, ``--runs`` fresh processes each measure:

- ``noop``: no-op tasks submitted, then gathered (tasks/s);
- ``tree``: a binary tree reduction of ``1``s (tasks/s over all its tasks);
- ``cpu``: 2N tasks that spin for 0.25 s (speedup; N is ideal).

Before timing, every system runs 4N no-op tasks so that all its workers are
started. Systems:

- ``orion-zmq``: the embedded cluster, ``orion.init(num_workers=N)`` (the head
  runs in the driver's process).
- ``orion-head``: ``orion head`` in a process of its own and one ``orion worker
  --num-workers N`` node; the driver joins by address.
- ``pool``: ``concurrent.futures.ProcessPoolExecutor(N)``, no scheduler: the
  tree is submitted level by level, each level once the one below is in.
- ``dask``: ``distributed.LocalCluster(n_workers=N, threads_per_worker=1)``,
  measured when it imports. It runs a tenth of the no-op tasks and a quarter
  of the tree's leaves, since it is ~30x slower per task.

Besides rates, each run reports the CPU share of the process that runs the
scheduler during the no-op and tree phases (CPU seconds / wall seconds; 1.0 is
one core busy the whole time): the driver for ``orion-zmq`` and ``pool``, the
head process for ``orion-head`` (and the driver's share too). A share near 1.0
means that process, not the workers, bounds the rate.

Runs are interleaved (all systems at one worker count, then the next run) and
each result is appended to ``--jsonl`` as soon as it is in, so a run cut
short still leaves its numbers. The table printed at the end has medians
(min-max) and each row's speedup over its own one-worker median.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NOOP_TASKS = 20_000
TREE_LEAVES = 4_096
SPIN_SECONDS = 0.25
DASK_SHARE = {"noop": 10, "tree": 4}   # Dask runs 1/10 of the no-ops and 1/4 of the leaves


def noop():
    return None


def one():
    return 1


def add(a, b):
    return a + b


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def cpu_seconds(pid=None):
    """CPU seconds (user + system) of this process, or of ``pid`` from /proc."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def submit_tree(system, leaves):
    """The whole reduction tree at once, each sum taking its two inputs by
    reference (a system with dependencies); the root's handle."""
    level = [system.submit(one) for _ in range(leaves)]
    while len(level) > 1:
        level = [system.submit(add, level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


# -- the systems: submit(fn, *args) -> handle, gather(handles) -> values ----------------------

class Orion:
    def __init__(self, workers, separate_head):
        import orion

        self.orion = orion
        self.cluster = None
        self.head_pid = None
        if separate_head:
            sys.path.insert(0, HERE)
            from cluster import SubprocessCluster

            self.cluster = SubprocessCluster([{"num_workers": workers}])
            self.head_pid = self.cluster.head_pid
            try:
                self.cluster.join(orion)
            except BaseException:
                self.close()
                raise
        else:
            orion.init(num_workers=workers)
        self.fns = {fn: orion.remote(fn) for fn in (noop, one, add, spin)}

    def submit(self, fn, *args):
        return self.fns[fn].remote(*args)

    def gather(self, refs):
        return self.orion.get(refs)

    def tree(self, leaves):
        return self.orion.get(submit_tree(self, leaves))

    def close(self):
        try:
            if self.orion.is_initialized():
                self.orion.shutdown()
        finally:
            if self.cluster is not None:
                self.cluster.close()


class Pool:
    def __init__(self, workers):
        self.pool = concurrent.futures.ProcessPoolExecutor(workers)

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def gather(self, futures):
        return [f.result() for f in futures]

    def tree(self, leaves):
        # No scheduler: each level is submitted once the level below is in.
        values = self.gather([self.submit(one) for _ in range(leaves)])
        while len(values) > 1:
            values = self.gather([self.submit(add, values[i], values[i + 1])
                                  for i in range(0, len(values), 2)])
        return values[0]

    def close(self):
        self.pool.shutdown()


class Dask:
    def __init__(self, workers):
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def gather(self, futures):
        return self.client.gather(futures)

    def tree(self, leaves):
        return submit_tree(self, leaves).result()

    def close(self):
        self.client.close()
        self.cluster.close()


SYSTEMS = {
    "orion-zmq": lambda n: Orion(n, separate_head=False),
    "orion-head": lambda n: Orion(n, separate_head=True),
    "pool": Pool,
    "dask": Dask,
}


def measure(system_name, workers):
    """One fresh system with ``workers`` workers: every workload once."""
    s = SYSTEMS[system_name](workers)
    share = DASK_SHARE if system_name == "dask" else {"noop": 1, "tree": 1}
    head_pid = getattr(s, "head_pid", None)
    results = {}

    def timed(phase, run):
        driver_cpu, head_cpu = cpu_seconds(), head_pid and cpu_seconds(head_pid)
        t = time.perf_counter()
        run()
        elapsed = time.perf_counter() - t
        results[f"{phase}_driver_cpu_share"] = (cpu_seconds() - driver_cpu) / elapsed
        if head_pid:
            results[f"{phase}_head_cpu_share"] = (cpu_seconds(head_pid) - head_cpu) / elapsed
        return elapsed

    try:
        s.gather([s.submit(noop) for _ in range(4 * workers)])          # start every worker

        count = NOOP_TASKS // share["noop"]
        elapsed = timed("noop", lambda: s.gather([s.submit(noop) for _ in range(count)]))
        results["noop_tasks_per_s"] = count / elapsed

        leaves = TREE_LEAVES // share["tree"]

        def tree():
            assert s.tree(leaves) == leaves

        results["tree_tasks_per_s"] = (2 * leaves - 1) / timed("tree", tree)

        t = time.perf_counter()
        s.gather([s.submit(spin, SPIN_SECONDS) for _ in range(2 * workers)])
        results["cpu_bound_speedup"] = 2 * workers * SPIN_SECONDS / (time.perf_counter() - t)
    finally:
        s.close()
    results["cores"] = os.cpu_count()
    return results


# -- the driver of the whole measurement ------------------------------------------------------

ROWS = [("noop_tasks_per_s", "no-op tasks/s"), ("tree_tasks_per_s", "tree tasks/s"),
        ("cpu_bound_speedup", "CPU-bound speedup"),
        ("noop_driver_cpu_share", "driver CPU share, no-op"),
        ("noop_head_cpu_share", "head CPU share, no-op"),
        ("tree_driver_cpu_share", "driver CPU share, tree"),
        ("tree_head_cpu_share", "head CPU share, tree")]


def available(system):
    return system != "dask" or importlib.util.find_spec("distributed") is not None


def run_once(system, workers, timeout):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", system, str(workers)],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(records, systems, worker_counts):
    lines = []
    for key, label in ROWS:
        for system in systems:
            base = None
            cells = []
            for n in worker_counts:
                values = [r[key] for r in records
                          if r["system"] == system and r["workers"] == n and key in r]
                if not values:
                    cells.append("n/a")
                    continue
                median = statistics.median(values)
                base = base if base is not None else (median if n == worker_counts[0] else None)
                scale = f" x{median / base:.1f}" if base and key.endswith("per_s") else ""
                cells.append(f"{fmt(median)} ({fmt(min(values))}-{fmt(max(values))}){scale}")
            if any(c != "n/a" for c in cells):
                lines.append(f"{label + ', ' + system:38}" + "".join(f"{c:>28}" for c in cells))
    header = f"{'row':38}" + "".join(f"{f'{n} workers':>28}" for n in worker_counts)
    return "\n".join([header] + lines)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="16,8,4,2,1",
                        help="worker counts, run in this order (the largest first, so a run cut short has it)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--systems", default="orion-zmq,orion-head,pool,dask")
    parser.add_argument("--jsonl", help="append each run's result to this file as it comes in")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run")
    parser.add_argument("--table", metavar="JSONL", help="only print the table of a --jsonl file")
    parser.add_argument("--one", nargs=2, metavar=("SYSTEM", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        json.dump(measure(args.one[0], int(args.one[1])), sys.stdout)
        return 0
    if args.table:
        with open(args.table) as f:
            records = [json.loads(line) for line in f if line.strip()]
        print_table(records, sorted({r["workers"] for r in records}),
                    [s for s in SYSTEMS if any(r["system"] == s for r in records)],
                    max(r["run"] for r in records) + 1)
        return 0
    worker_counts = [int(n) for n in args.workers.split(",")]   # run in this order
    systems = [s for s in args.systems.split(",") if available(s)]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {sorted(SYSTEMS)}")
    records = []
    for n in worker_counts:
        for i in range(args.runs):
            for system in systems:
                t = time.perf_counter()
                result = dict(run_once(system, n, args.timeout), system=system, workers=n, run=i)
                result["wall_s"] = time.perf_counter() - t
                records.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(result) + "\n")
    print_table(records, sorted(worker_counts), systems, args.runs)
    return 0


def print_table(records, worker_counts, systems, runs):
    cores = sorted({r.get("cores", "?") for r in records}, key=str)
    print(f"\nmedians of {runs} runs (min-max), {'/'.join(map(str, cores))} cores; "
          f"xK = tasks/s against the same row's {worker_counts[0]}-worker median\n")
    print(table(records, systems, worker_counts))
    for r in records:
        if "error" in r:
            print(f"note: {r['system']} with {r['workers']} workers, run {r['run']}: {r['error']}")


if __name__ == "__main__":
    sys.exit(main())
