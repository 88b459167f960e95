"""Scale of the head: throughput with many nodes, heartbeat cost, memory per task and per node.

    python benchmarks/head_scale.py [--nodes 10,100,1000] [--tasks N] [--runs R]
    python benchmarks/head_scale.py --only heartbeat,memory     # parts: throughput, heartbeat, memory, micro
    python benchmarks/head_scale.py --only micro --tasks 1000000 # the sans-I/O scheduler alone

A real head (``orion.transport.zmq_head.HeadServer``) runs in a subprocess of
its own, so that its CPU time and RSS can be read from ``/proc``. Around it:

* **Fake nodes**, speaking the real protocol (``docs/PROTOCOL.md``): a few
  processes (``--sim-procs``, default 4) each own the DEALER sockets of
  their share of the nodes (identity ``n:<node id>``: ``register``, then
  ``heartbeat`` every interval) and of those nodes' workers (identity
  ``w:<node id>-w<i>``: ``hello``, then, for every ``dispatch``, at once one
  ``done`` reporting a pickled None for each of its tasks, as a real worker
  that ran them back to back does), all behind one epoll. Nothing runs a
  task, so the head is what is measured.
* **A raw driver**: a DEALER (``c:...``) that says ``hello`` and sends
  ``submit`` messages of 5,000 no-op task records, then counts the values
  that come back in ``objects`` messages and ``release``\ s each batch, as a
  driver dropping its refs does (``--keep-results``: it never does, so the
  head keeps every value, as for a driver holding a million refs).

Parts (``--only``):

* ``throughput``: for each node count, ``--total-workers`` workers in all
  (default 1,000: the same total whatever the node count, so only the
  number of nodes changes; each node offers as many CPUs as it has
  workers). The nodes register and their workers stay silent while the
  driver submits every task, so all of them queue; once the head has taken
  them all in (a ``status`` round trip), the workers say ``hello`` and the
  clock runs until the last value is back: tasks/s is the head's drain rate.
  The head's CPU time over the drain says whether it was the bound.
* ``heartbeat``: 1,000 idle nodes (one worker each) heartbeat every
  ``ORION_HEARTBEAT_INTERVAL`` (default 1 s) for ``--heartbeat-seconds``;
  the head's CPU time over that window divided by its length is its share of
  a core spent on heartbeats (nothing else happens). ``--heartbeat-mode
  timer`` (default) is what ``orion worker`` does: each node on its own
  timer, their phases spread over the interval; ``echo`` also answers each
  heartbeat of the head at once, so the head hears them in one burst.
* ``memory``: the head's RSS before and after ``--tasks`` tasks are queued
  with no node at all (per queued task), and before and after 1,000 nodes
  with one worker each register (per node).
* ``micro``: the sans-I/O ``Scheduler`` alone, no sockets: the same node
  counts and total workers, every node pipelining 2 tasks per worker
  (``--micro-like-head``: as ``HeadServer`` sets it up instead), every task
  submitted first, then each completion fed back as ``TaskFinished``;
  microseconds per task for submitting and for draining, and the drain's
  per-task cost at the start (queue full) and the end (queue nearly empty).

Every number is a median over ``--runs`` fresh heads (or schedulers). Prints
a table, or JSON with ``--json``. To measure another tree of Orion (an older
commit, say), put it first on ``PYTHONPATH``: the head runs whatever
``import orion`` finds. ``docs/PERFORMANCE.md`` ("Head scale") has the
numbers of the project's machine.
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import pickle
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque

import msgpack
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.append(ROOT)  # after PYTHONPATH: an orion tree named there is the one measured

from orion.transport import protocol  # noqa: E402

ARGS_HEADER = pickle.dumps(((), {}), protocol=5)  # a no-op's arguments, as a driver pickles them
RESULT = [pickle.dumps(None, protocol=5), 0]  # what each fake worker returns: None, no buffers
FUNCTION_ID = "head-scale-noop"
FUNCTION_BLOB = pickle.dumps(None, protocol=5)  # never unpickled: no worker runs anything
BATCH = 5000  # task records per submit message (the head's own batch limit)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _pack(msg_type, body):
    return msgpack.packb([protocol.PROTOCOL_VERSION, msg_type, body], use_bin_type=True)


def _unpack(frame):
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


# ---------------------------------------------------------------- /proc
def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


# ---------------------------------------------------------------- the head
def serve_head():
    """``head_scale.py _head``: a HeadServer on a random loopback port, set up as
    ``orion head`` sets up its process; prints its address, serves until stdin closes."""
    import threading

    from orion import gc_tuning
    from orion.transport.zmq_head import HeadServer

    gc_tuning.raise_threshold()  # as `orion head` does
    server = HeadServer("127.0.0.1", 0)
    print(server.address, flush=True)

    def watch_stdin():
        sys.stdin.read()
        server.stop()

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.serve()


class Head:
    """The head subprocess."""

    def __init__(self, interval=None):
        env = dict(os.environ)
        env["ORION_MAX_UNFINISHED_PER_OWNER"] = str(10**9)  # one driver queues everything
        if interval is not None:
            env["ORION_HEARTBEAT_INTERVAL"] = str(interval)
        # Its log (nodes leaving at the end, ...) goes to a file, shown if it fails.
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_head"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.address = self.process.stdout.readline().strip()
        if not self.address.startswith("tcp://"):
            self.log.seek(0)
            raise RuntimeError(f"the head did not start (said {self.address!r}): {self.log.read()[-2000:]}")
        self.pid = self.process.pid

    def cpu(self):
        return cpu_seconds(self.pid)

    def rss(self):
        return rss_bytes(self.pid)

    def close(self):
        try:
            self.process.stdin.close()
            self.process.wait(10)
        except Exception:
            self.process.kill()
            self.process.wait()
        self.log.close()


# ---------------------------------------------------------------- fake nodes
def serve_nodes(address, first, count, workers_per_node, interval, echo=False):
    """``head_scale.py _nodes ...``: simulate ``count`` nodes from index ``first``
    (``echo``: see ``--heartbeat-mode``).

    Commands on stdin: ``go`` (the workers say hello), ``quit``. Prints
    ``registered`` once every node was answered ``registered``."""
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 100_000)
    nodes, workers, kind = [], [], {}
    for n in range(first, first + count):
        node_id = f"sim{n:05d}"
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, b"n:" + node_id.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        nodes.append((sock, node_id))
        kind[sock] = ("node", node_id)
        for i in range(workers_per_node):
            worker_id = f"{node_id}-w{i}"
            wsock = context.socket(zmq.DEALER)
            wsock.setsockopt(zmq.IDENTITY, b"w:" + worker_id.encode())
            wsock.setsockopt(zmq.LINGER, 0)
            wsock.setsockopt(zmq.RCVHWM, 0)
            wsock.setsockopt(zmq.SNDHWM, 0)
            wsock.connect(address)
            workers.append((wsock, worker_id, node_id))
            kind[wsock] = ("worker", worker_id)

    def register(sock, node_id):
        sock.send(_pack("register", [node_id, {"CPU": float(workers_per_node)}, workers_per_node, "127.0.0.1",
                                     os.getpid(), {"address": "tcp://127.0.0.1:1", "limit": 1 << 30}]))

    for sock, node_id in nodes:
        register(sock, node_id)
    # One epoll over the sockets' ZMQ_FDs, not a zmq.Poller: polling hundreds
    # of sockets costs the Poller O(sockets) per wake-up, and this process
    # shares the machine with the head it measures. A ZMQ_FD only says that
    # the socket may have something: each socket it names is drained until
    # EAGAIN, and one that sent outside a drain (a heartbeat) is looked at
    # again, since a send may consume the signal of a message that arrived.
    epoll = select.epoll()
    by_fd = {}
    for sock in kind:
        fd = sock.getsockopt(zmq.FD)
        by_fd[fd] = sock
        epoll.register(fd, select.EPOLLIN)
    stdin = sys.stdin.fileno()
    epoll.register(stdin, select.EPOLLIN)
    pending = set(kind)
    registered = set()
    heartbeat = _pack("heartbeat", [])
    # When each node heartbeats next: a heap of (due, node index), stale
    # entries skipped. Spread evenly over the interval at first, as nodes
    # started at different times are; with ``echo`` a node also heartbeats
    # as soon as it hears the head's, and its own timer starts again.
    now = time.monotonic()
    due = [now + interval * (k + 1) / count for k in range(count)]
    beats = [(d, k) for k, d in enumerate(due)]
    index_of = {name: k for k, (_, name) in enumerate(nodes)}
    while True:
        timeout = 0 if pending else max(0.0, beats[0][0] - time.monotonic())
        for fd, _ in epoll.poll(timeout):
            if fd != stdin:
                pending.add(by_fd[fd])
                continue
            line = os.read(stdin, 4096).decode()
            if "quit" in line or not line:
                epoll.close()
                context.destroy(linger=0)
                return
            if "go" in line:
                for wsock, worker_id, node_id in workers:
                    wsock.send(_pack("hello", ["worker", worker_id, node_id, os.getpid()]))
                    pending.add(wsock)
        ready, pending = pending, set()
        for sock in ready:
            role, name = kind[sock]
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                message = _unpack(frames[0])
                msg_type = message[1]
                if role == "worker":
                    if msg_type == "dispatch":
                        # As a real worker that ran them back to back: one done for the lot.
                        now = time.time()
                        sock.send(_pack("done", [[[record[0], [RESULT], [now, now]] for record in message[2][0]]]))
                    elif msg_type == "error":
                        print(f"worker {name}: {message[2]}", file=sys.stderr, flush=True)
                elif msg_type == "heartbeat":
                    if echo:
                        sock.send(heartbeat)
                        k = index_of[name]
                        due[k] = time.monotonic() + interval
                        heapq.heappush(beats, (due[k], k))
                elif msg_type == "registered":
                    registered.add(name)
                    if len(registered) == count:
                        print("registered", flush=True)
                elif msg_type == "reregister":
                    register(sock, name)
        now = time.monotonic()
        while beats[0][0] <= now:
            when, k = heapq.heappop(beats)
            if when == due[k]:  # else the node heartbeat since (echo) and has a later entry
                sock = nodes[k][0]
                sock.send(heartbeat)
                if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    pending.add(sock)
                due[k] = when + interval
                heapq.heappush(beats, (due[k], k))


class FakeNodes:
    """The processes simulating ``count`` nodes of ``workers_per_node`` workers."""

    def __init__(self, address, count, workers_per_node, procs, interval, mode="timer"):
        procs = max(1, min(procs, count))
        self.processes = []
        start = 0
        for p in range(procs):
            share = count // procs + (p < count % procs)
            self.processes.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "_nodes", address, str(start), str(share),
                 str(workers_per_node), str(interval), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True))
            start += share
        for process in self.processes:
            line = process.stdout.readline().strip()
            if line != "registered":
                raise RuntimeError(f"fake nodes did not register (said {line!r})")

    def cpu(self):
        return sum(cpu_seconds(process.pid) for process in self.processes)

    def tell(self, command):
        for process in self.processes:
            process.stdin.write(command + "\n")
            process.stdin.flush()

    def close(self):
        for process in self.processes:
            try:
                process.stdin.write("quit\n")
                process.stdin.close()
            except OSError:
                pass
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ---------------------------------------------------------------- the driver
class Driver:
    """A raw client: submits no-op task records, counts the values that come back."""

    def __init__(self, address, release=True):
        self.release = release  # free each value once it came back, as a driver dropping its refs does
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, f"c:head-scale-{os.getpid()}".encode())
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.connect(address)
        self.socket.send(_pack("hello", ["client", "head-scale", None, os.getpid()]))
        self._expect("welcome")
        self.received = 0
        self.prefix = os.urandom(6).hex()

    def _expect(self, msg_type, timeout=600):
        if not self.socket.poll(timeout * 1000):
            raise RuntimeError(f"no {msg_type} from the head")
        message = _unpack(self.socket.recv_multipart()[0])
        if message[1] != msg_type:
            raise RuntimeError(f"expected {msg_type}, got {message[1]}: {message[2]}")
        return message[2]

    def submit(self, count):
        functions = [[FUNCTION_ID, FUNCTION_BLOB]]
        for start in range(0, count, BATCH):
            records = []
            for i in range(start, min(count, start + BATCH)):
                task_id = f"{self.prefix}{i:08x}"
                records.append([task_id, [task_id + "0001"], [], {"CPU": 1.0}, 3, "noop", FUNCTION_ID, 1, False,
                                ARGS_HEADER, 0, []])
            self.socket.send(_pack("submit", [functions, records]))
            functions = []

    def status(self):
        """The head's status; it answers after everything sent before."""
        self.socket.send(_pack("status", [1]))
        while True:
            message = _unpack(self.socket.recv_multipart()[0])
            if message[1] == "status_reply":
                return message[2][1]
            self._count(message)

    def _count(self, message):
        if message[1] == "objects":
            items = message[2][0]
            for item in items:
                if item[1] is not True:
                    raise RuntimeError(f"a task failed: {item}")
            self.received += len(items)
            if self.release:
                self.socket.send(_pack("release", [[item[0] for item in items]]))

    def wait_for(self, count, timeout=3600):
        deadline = time.monotonic() + timeout
        while self.received < count:
            if not self.socket.poll(max(0, deadline - time.monotonic()) * 1000):
                raise RuntimeError(f"only {self.received} of {count} values came back")
            self._count(_unpack(self.socket.recv_multipart()[0]))

    def close(self):
        self.context.destroy(linger=0)


# ---------------------------------------------------------------- parts
def throughput(nodes, tasks, total_workers, procs, release=True):
    workers_per_node = max(1, total_workers // nodes)
    head = Head()
    fake = driver = None
    try:
        fake = FakeNodes(head.address, nodes, workers_per_node, procs, interval=1.0)
        driver = Driver(head.address, release)
        submit_started = time.monotonic()
        driver.submit(tasks)
        status = driver.status()
        queued = status["tasks"]["ready"]
        if queued != tasks:
            raise RuntimeError(f"{queued} tasks queued, expected {tasks}")
        ingest = time.monotonic() - submit_started
        rss_queued = head.rss()
        cpu0, t0, others0 = head.cpu(), time.monotonic(), fake.cpu() + cpu_seconds(os.getpid())
        fake.tell("go")
        driver.wait_for(tasks)
        elapsed = time.monotonic() - t0
        cpu = head.cpu() - cpu0
        others = fake.cpu() + cpu_seconds(os.getpid()) - others0
        return {"nodes": nodes, "workers_per_node": workers_per_node, "tasks": tasks,
                "tasks_per_s": tasks / elapsed, "drain_s": elapsed, "head_cpu_share": cpu / elapsed,
                "head_cpu_us_per_task": cpu / tasks * 1e6, "others_cpu_share": others / elapsed,
                "ingest_tasks_per_s": tasks / ingest,
                "head_rss_queued_mib": rss_queued / 2**20}
    finally:
        _close(driver, fake, head)


def _close(*parts):
    """Close what was started, in order; None: never started."""
    for part in parts:
        if part is not None:
            part.close()


def heartbeat(nodes, seconds, procs, interval, mode):
    head = Head(interval)
    fake = None
    try:
        idle_cpu0 = head.cpu()
        time.sleep(2.0)
        idle = (head.cpu() - idle_cpu0) / 2.0  # the loop alone, no node
        fake = FakeNodes(head.address, nodes, 1, procs, interval, mode)
        fake.tell("go")
        time.sleep(2.0 + interval)  # registrations and hellos are over
        cpu0, t0 = head.cpu(), time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t0
        cpu = head.cpu() - cpu0
        beats = nodes * wall / interval  # received, and as many sent
        return {"nodes": nodes, "interval_s": interval, "mode": mode, "head_cpu_share": cpu / wall, "idle_cpu_share": idle,
                "us_per_heartbeat": cpu / beats * 1e6}
    finally:
        _close(fake, head)


def memory(tasks, nodes, procs):
    head = Head()
    driver = None
    try:
        driver = Driver(head.address)
        time.sleep(0.5)
        before = head.rss()
        driver.submit(tasks)
        queued = driver.status()["tasks"]["ready"]
        if queued != tasks:
            raise RuntimeError(f"{queued} tasks queued, expected {tasks}")
        after = head.rss()
    finally:
        _close(driver, head)
    head = Head()
    fake = driver = None
    try:
        driver = Driver(head.address)
        driver.status()
        time.sleep(0.5)
        node_before = head.rss()
        fake = FakeNodes(head.address, nodes, 1, procs, 1.0)
        fake.tell("go")
        time.sleep(2.0)
        driver.status()
        node_after = head.rss()
    finally:
        _close(driver, fake, head)
    return {"tasks": tasks, "rss_before_mib": before / 2**20, "rss_queued_mib": after / 2**20,
            "bytes_per_queued_task": (after - before) / tasks, "nodes": nodes,
            "bytes_per_node": (node_after - node_before) / nodes}


def micro(nodes, tasks, total_workers, depth=2, like_head=False):
    """The sans-I/O scheduler alone: submit ``tasks``, then drain them. Nodes
    pipeline ``depth`` tasks per worker; ``like_head``: as ``HeadServer`` sets
    it up instead (its depth, adaptive pipelining, each run reported as 10 µs)."""
    import gc

    from orion.scheduler import (Dispatch, NodeJoined, Scheduler, TaskFinished, TaskSpec, TaskSubmitted,
                                 WorkerJoined)

    workers_per_node = max(1, total_workers // nodes)
    duration = None
    if like_head:
        from orion.transport.base import PIPELINE_DEPTH

        depth, duration = PIPELINE_DEPTH, 1e-5
        s = Scheduler(adaptive_pipelining=True)
    else:
        s = Scheduler()
    for n in range(nodes):
        s.handle(NodeJoined(f"n{n}", {"CPU": float(workers_per_node)}, workers_per_node, pipeline=depth))
    demand = {"CPU": 1.0}
    gc.collect()
    gc.disable()  # as the head's gc tuning does while busy: measure the scheduler, not the collector
    try:
        started = time.perf_counter()
        for start in range(0, tasks, BATCH):
            s.handle_all([TaskSubmitted(TaskSpec(f"t{i}", (f"t{i}r",), (), demand, 3, "noop"))
                          for i in range(start, min(tasks, start + BATCH))])
        submit = time.perf_counter() - started
        busy = deque()
        started = time.perf_counter()
        for n in range(nodes):
            for i in range(workers_per_node):
                for command in s.handle(WorkerJoined(f"n{n}-w{i}", f"n{n}")):
                    if type(command) is Dispatch and s.task_state(command.spec.task_id) == "running":
                        busy.append(command.worker_id)
        done = 0
        chunk = max(1, tasks // 10)
        chunks, chunk_started = [], time.perf_counter()
        handle, worker_task = s.handle, s.worker_task
        while busy:
            worker_id = busy.popleft()
            for command in handle(TaskFinished(worker_task(worker_id), worker_id, duration)):
                if type(command) is Dispatch and command.worker_id != worker_id \
                        and worker_task(command.worker_id) == command.spec.task_id:
                    busy.append(command.worker_id)  # an idle worker got it
            if worker_task(worker_id) is not None:
                busy.append(worker_id)  # it runs its queued task, or got a new one
            done += 1
            if done % chunk == 0:
                now = time.perf_counter()
                chunks.append((now - chunk_started) / chunk)
                chunk_started = now
        drain = time.perf_counter() - started
    finally:
        gc.enable()
    if done != tasks:
        raise RuntimeError(f"{done} of {tasks} tasks finished")
    return {"nodes": nodes, "workers_per_node": workers_per_node, "tasks": tasks, "depth": depth,
            "submit_us_per_task": submit / tasks * 1e6, "drain_us_per_task": drain / tasks * 1e6,
            "drain_first_tenth_us": chunks[0] * 1e6 if chunks else None,
            "drain_last_tenth_us": chunks[-1] * 1e6 if chunks else None}


# ---------------------------------------------------------------- main
def _median_rows(rows):
    """One row of medians (numbers) from several runs of the same configuration."""
    result = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            result[key] = statistics.median(values)
            if len(values) > 1 and isinstance(values[0], float):
                result[key + "_range"] = [min(values), max(values)]
        else:
            result[key] = values[0]
    result["runs"] = len(rows)
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_head":
        return serve_head()
    if argv and argv[0] == "_nodes":
        address, first, count, per_node, interval, mode = argv[1:7]
        return serve_nodes(address, int(first), int(count), int(per_node), float(interval), mode == "echo")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="10,100,1000", help="node counts (default 10,100,1000)")
    parser.add_argument("--tasks", type=int, default=1_000_000, help="no-op tasks per run (default 1,000,000)")
    parser.add_argument("--total-workers", type=int, default=1000,
                        help="workers over all nodes, whatever their number (default 1000)")
    parser.add_argument("--runs", type=int, default=1, help="fresh heads per configuration; medians (default 1)")
    parser.add_argument("--sim-procs", type=int, default=4, help="processes simulating the nodes (default 4)")
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0)
    parser.add_argument("--heartbeat-nodes", type=int, default=1000)
    parser.add_argument("--heartbeat-interval", type=float,
                        default=float(os.environ.get("ORION_HEARTBEAT_INTERVAL", 1.0)))
    parser.add_argument("--heartbeat-mode", default="timer", choices=["timer", "echo"],
                        help="timer: each node heartbeats on its own timer, phases spread over the interval "
                             "(what orion worker does); echo: a node also answers each heartbeat of the head "
                             "at once (then its timer starts again), so the head hears them in one burst")
    parser.add_argument("--memory-nodes", type=int, default=1000)
    parser.add_argument("--keep-results", action="store_true",
                        help="the driver never releases the values it gets (as one holding every ref), so "
                             "the head keeps them all; by default it releases each batch as it arrives")
    parser.add_argument("--only", default="throughput,heartbeat,memory,micro",
                        help="parts to run: throughput, heartbeat, memory, micro")
    parser.add_argument("--micro-like-head", action="store_true",
                        help="micro: pipeline as HeadServer does (its depth, adaptive) instead of depth 2")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    node_counts = [int(n) for n in args.nodes.split(",")]
    results = {"cpus": os.cpu_count()}

    def log(text):
        print(text, file=sys.stderr, flush=True)

    if "throughput" in parts:
        results["throughput"] = []
        for nodes in node_counts:
            rows = []
            for run in range(args.runs):
                rows.append(throughput(nodes, args.tasks, args.total_workers, args.sim_procs,
                                       not args.keep_results))
                log(f"throughput {nodes} nodes, run {run + 1}: {rows[-1]['tasks_per_s']:,.0f} tasks/s")
            results["throughput"].append(_median_rows(rows))
    if "heartbeat" in parts:
        rows = []
        for run in range(args.runs):
            rows.append(heartbeat(args.heartbeat_nodes, args.heartbeat_seconds, args.sim_procs,
                                  args.heartbeat_interval, args.heartbeat_mode))
            log(f"heartbeat run {run + 1}: {rows[-1]['head_cpu_share']:.2%} of a core")
        results["heartbeat"] = _median_rows(rows)
    if "memory" in parts:
        rows = []
        for run in range(args.runs):
            rows.append(memory(args.tasks, args.memory_nodes, args.sim_procs))
            log(f"memory run {run + 1}: {rows[-1]['bytes_per_queued_task']:.0f} B/task, "
                f"{rows[-1]['bytes_per_node']:.0f} B/node")
        results["memory"] = _median_rows(rows)
    if "micro" in parts:
        results["micro"] = []
        for nodes in node_counts:
            rows = []
            for run in range(args.runs):
                rows.append(micro(nodes, args.tasks, args.total_workers, like_head=args.micro_like_head))
                log(f"micro {nodes} nodes, run {run + 1}: {rows[-1]['drain_us_per_task']:.1f} us/task drained")
            results["micro"].append(_median_rows(rows))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"head scale ({results['cpus']} CPUs; medians of {args.runs} run(s))")
    for row in results.get("throughput", ()):
        print(f"  throughput  {row['nodes']:>5} nodes x {row['workers_per_node']} workers: "
              f"{row['tasks_per_s']:>9,.0f} tasks/s  (head CPU {row['head_cpu_share']:.0%} of a core, "
              f"{row['head_cpu_us_per_task']:.0f} us/task; fake nodes + driver {row['others_cpu_share']:.0%}; "
              f"ingest {row['ingest_tasks_per_s']:,.0f} tasks/s)")
    if "heartbeat" in results:
        row = results["heartbeat"]
        print(f"  heartbeats  {row['nodes']} idle nodes every {row['interval_s']} s ({row['mode']}): "
              f"{row['head_cpu_share']:.2%} "
              f"of a core ({row['us_per_heartbeat']:.1f} us per heartbeat in + out; idle loop "
              f"{row['idle_cpu_share']:.2%})")
    if "memory" in results:
        row = results["memory"]
        print(f"  memory      {row['tasks']:,} queued tasks: {row['rss_before_mib']:.0f} -> "
              f"{row['rss_queued_mib']:.0f} MiB RSS = {row['bytes_per_queued_task']:.0f} B/task; "
              f"{row['bytes_per_node']:,.0f} B per node ({row['nodes']} nodes)")
    for row in results.get("micro", ()):
        print(f"  scheduler   {row['nodes']:>5} nodes x {row['workers_per_node']} workers, depth {row['depth']}: submit "
              f"{row['submit_us_per_task']:.1f} us/task, drain {row['drain_us_per_task']:.1f} us/task "
              f"(first tenth {row['drain_first_tenth_us']:.1f}, last tenth {row['drain_last_tenth_us']:.1f})")


if __name__ == "__main__":
    main()
