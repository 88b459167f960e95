"""Chaos test: a head and N nodes run a 3,110-task DAG while a killer SIGKILLs a
random worker process or a whole node every second (restarting killed nodes),
and once kills and restarts the head. Passes when every result is right, no
``get`` hangs and no process is left behind. Prints what was killed and how
long the cluster took to finish tasks again after each kill.

    scripts/chaos.sh [--duration 15] [--nodes 3] [--workers-per-node 1] [--seed N]
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import orion

HEARTBEAT = ["--heartbeat-interval", "0.2", "--heartbeat-liveness", "5"]


# ------------------------------------------------------------------ the DAG
@orion.remote(max_retries=-1)
def leaf(i, pause):
    time.sleep(pause)
    return i


@orion.remote(max_retries=-1)
def add(a, b, pause):
    time.sleep(pause)
    return a + b


@orion.remote(max_retries=-1)
def inc(x, pause):
    time.sleep(pause)
    return x + 1


@orion.remote(max_retries=-1)
def blob(counter, pause):
    # Over the inline limit: it lives in a node's store, so killing that node
    # loses it and the cluster must rebuild it from its lineage.
    time.sleep(pause)
    return counter.to_bytes(8, "little") * 25_000


@orion.remote(max_retries=-1)
def grow(previous, pause):
    time.sleep(pause)
    return (int.from_bytes(previous[:8], "little") + 1).to_bytes(8, "little") * 25_000


@orion.remote(max_retries=-1)
def count(value, pause):
    time.sleep(pause)
    assert len(value) == 200_000
    return int.from_bytes(value[:8], "little")


def build_dag(pause):
    """3,110 tasks: a 1,000-leaf tree reduction (wide layers, 1,999 tasks), 25
    chains of 40, 10 chains of 11 passing 200 KB values (kept in node stores)
    and one lone task. Returns [(ref, expected)] for the results
    we check and every ref (to time completions)."""
    checks, every = [], []
    level = [leaf.remote(i, pause) for i in range(1000)]
    every += level
    while len(level) > 1:
        nxt = [add.remote(level[i], level[i + 1], pause) for i in range(0, len(level) - 1, 2)]
        every += nxt
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    checks.append((level[0], sum(range(1000))))
    for c in range(25):
        ref = inc.remote(c, pause)
        every.append(ref)
        for _ in range(39):
            ref = inc.remote(ref, pause)
            every.append(ref)
        checks.append((ref, c + 40))
    for c in range(10):  # 10 chains of 200 KB values that stay in node stores
        ref = blob.remote(c * 100, pause)
        every.append(ref)
        for _ in range(9):
            ref = grow.remote(ref, pause)
            every.append(ref)
        ref = count.remote(ref, pause)
        every.append(ref)
        checks.append((ref, c * 100 + 9))
    lone = leaf.remote(-1, pause)
    every.append(lone)
    checks.append((lone, -1))
    return checks, every


# ------------------------------------------------------------------ processes
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orion_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen([sys.executable, "-m", "orion.cli", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)


def worker_pids(tag):
    """Worker processes whose node id carries ``tag`` (scan of /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if b"orion.transport.zmq_worker" in args and any(tag.encode() in a for a in args):
            pids.append(int(entry))
    return pids


class Cluster:
    def __init__(self, nodes, workers, tag):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.workers = workers
        self.node_ids = [f"chaos-{tag}-n{i}" for i in range(nodes)]
        self.head = None
        self.nodes = {}
        self.tag = tag

    def start_head(self):
        self.head = orion_cli("head", "--port", self.port, *HEARTBEAT)

    def start_node(self, node_id):
        self.nodes[node_id] = orion_cli("worker", "--address", self.address, "--num-workers", self.workers,
                                        "--node-id", node_id, *HEARTBEAT)

    def stop(self):
        for proc in [*self.nodes.values(), self.head]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self.nodes.values(), self.head]:
            if proc is None:
                continue
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------ the killer
class Killer(threading.Thread):
    def __init__(self, cluster, rng, interval, head_kill_at):
        super().__init__(daemon=True)
        self.cluster, self.rng, self.interval, self.head_kill_at = cluster, rng, interval, head_kill_at
        self.kills = []  # (time, what)
        self.stopping = threading.Event()

    def run(self):
        start = time.monotonic()
        head_killed = False
        while not self.stopping.wait(self.interval):
            if not head_killed and time.monotonic() - start >= self.head_kill_at:
                head_killed = True
                self.cluster.head.kill()
                self.cluster.head.wait()
                self.kills.append((time.monotonic(), "head"))
                self.cluster.start_head()
                continue
            if self.rng.random() < 0.6:
                pids = worker_pids(self.cluster.tag)
                if pids:
                    pid = self.rng.choice(pids)
                    try:
                        os.kill(pid, signal.SIGKILL)
                        self.kills.append((time.monotonic(), f"worker process {pid}"))
                    except ProcessLookupError:
                        pass
                    continue
            node_id = self.rng.choice(self.cluster.node_ids)
            proc = self.cluster.nodes[node_id]
            proc.kill()
            proc.wait()
            self.kills.append((time.monotonic(), f"node {node_id}"))
            self.cluster.start_node(node_id)  # restarted under the same id


def run(duration, nodes, workers, seed):
    rng = random.Random(seed)
    tag = f"{os.getpid()}{rng.randrange(10**6)}"
    cluster = Cluster(nodes, workers, tag)
    cluster.start_head()
    for node_id in cluster.node_ids:
        cluster.start_node(node_id)
    orion.init(address=cluster.address)
    deadline = time.monotonic() + 30
    while orion.cluster_resources()["CPU"] < nodes * workers:
        if time.monotonic() > deadline:
            raise SystemExit("chaos: the cluster did not come up")
        time.sleep(0.05)

    total_workers = nodes * workers
    pause = duration * total_workers / 3110 * 0.8
    killer = Killer(cluster, rng, 1.0, head_kill_at=duration / 3)
    started = time.monotonic()
    checks, every = build_dag(pause)
    count = len(every)
    killer.start()
    completions = []  # arrival times of results at this driver
    for ref in every:
        ref.future().add_done_callback(lambda _: completions.append(time.monotonic()))
    ok = True
    try:
        try:
            results = orion.get([ref for ref, _ in checks], timeout=duration * 6 + 60)
        except orion.GetTimeoutError as exc:
            print(f"FAIL: results still missing at the hard deadline: {exc}")
            ok = False
        killer.stopping.set()
        killer.join()
        if ok:
            wrong = [(got, want) for got, (_, want) in zip(results, checks) if got != want]
            if wrong:
                print(f"FAIL: {len(wrong)} wrong results, e.g. {wrong[:3]}")
                ok = False
    finally:
        killer.stopping.set()
        elapsed = time.monotonic() - started
        orion.shutdown()
        cluster.stop()

    orphan_deadline = time.monotonic() + 10
    while worker_pids(tag) and time.monotonic() < orphan_deadline:
        time.sleep(0.1)
    orphans = worker_pids(tag)
    if orphans:
        print(f"FAIL: orphan worker processes {orphans}")
        ok = False

    recoveries = []
    completions.sort()
    for kill_time, _what in killer.kills:
        after = [t for t in completions if t > kill_time]
        recoveries.append((after[0] - kill_time) if after else float("nan"))
    print(f"chaos: {count} tasks on {nodes} nodes x {workers} workers in {elapsed:.1f} s; "
          f"{len(killer.kills)} kills")
    for (kill_time, what), recovery in zip(killer.kills, recoveries):
        print(f"  t={kill_time - started:6.2f}s  killed {what:<40} tasks finishing again after {recovery:.3f} s")
    measured = [r for r in recoveries if r == r]
    if measured:
        print(f"recovery: median {statistics.median(measured):.3f} s, worst {max(measured):.3f} s")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="target length of the run (s)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workers-per-node", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"chaos seed {seed}")
    return run(args.duration, args.nodes, args.workers_per_node, seed)


if __name__ == "__main__":
    sys.exit(main())
