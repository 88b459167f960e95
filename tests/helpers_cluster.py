"""Helpers for tests that run real heads, nodes and worker processes over localhost.

* ``free_port`` / ``port_is_free``: find a port, check that nobody listens on it.
* ``wait_until``: poll a condition with a deadline (never sleep to synchronise).
* ``OrionProcess``: an ``orion`` subprocess in its own session whose output is
  collected line by line by a thread, so tests can wait for log lines.
* ``worker_pids`` / ``pid_alive``: find worker processes by scanning /proc
  (no psutil), for orphan checks.
* ``LocalCluster``: a head and nodes started through the CLI; ``cleanup``
  kills everything it started (process groups and worker processes).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# Short heartbeats: a silent peer is declared dead after 0.2 s x 5 = 1 s.
HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_LIVENESS = 5
HEARTBEAT_FLAGS = ["--heartbeat-interval", str(HEARTBEAT_INTERVAL),
                   "--heartbeat-liveness", str(HEARTBEAT_LIVENESS)]

WORKER_MODULE = "orion.transport.zmq_worker"


# ----------------------------------------------------------------- polling
def wait_until(predicate, timeout=10.0, interval=0.02, message=None):
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            pytest.fail(text or f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


# ----------------------------------------------------------------- ports
def free_port(host="127.0.0.1"):
    """A port that nobody listens on right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port, host="127.0.0.1"):
    """True when a fresh listening socket can bind ``port`` (SO_REUSEADDR, as ZeroMQ
    uses: connections in TIME_WAIT do not count, a listener does)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1)
        return True
    except OSError:
        return False
    finally:
        sock.close()


# ----------------------------------------------------------------- processes
def subprocess_env(**extra):
    """The environment for orion subprocesses: test modules importable, no inherited
    ``ORION_ADDRESS``, plus ``extra``."""
    env = dict(os.environ)
    env.pop("ORION_ADDRESS", None)
    path = [str(TESTS_DIR), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def orion_command(*args):
    return [sys.executable, "-m", "orion.cli", *map(str, args)]


def run_orion(*args, timeout=30, env=None):
    """Run an ``orion`` command to completion: ``CompletedProcess`` with text output."""
    return subprocess.run(orion_command(*args), capture_output=True, text=True, timeout=timeout,
                          env=env or subprocess_env(), stdin=subprocess.DEVNULL, start_new_session=True)


def _proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[0]


def pid_alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def find_pids(predicate):
    """Pids of live processes whose argv (a list) satisfies ``predicate``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        args = _proc_cmdline(entry)
        if args and predicate(args) and pid_alive(entry):
            pids.append(int(entry))
    return sorted(pids)


def worker_pids(node_id=None, address=None):
    """Pids of live ``orion.transport.zmq_worker`` processes of ``node_id`` (its last
    argument) and/or of the head at ``address``."""

    def match(args):
        if WORKER_MODULE not in args:
            return False
        if node_id is not None and args[-1] != node_id:
            return False
        if address is not None and address not in args:
            return False
        return True

    return find_pids(match)


def kill_pids(pids, sig=signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class OrionProcess:
    """An ``orion ...`` subprocess in its own session, output (stdout + stderr)
    collected line by line."""

    def __init__(self, *args, env=None, name=None):
        self.args = [str(a) for a in args]
        self.name = name or " ".join(self.args[:2])
        self.lines = []
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(orion_command(*self.args), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env or subprocess_env(), start_new_session=True)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"read-{self.pid}")
        self._reader.start()

    def _read(self):
        # Worker processes inherit a node's stdout: EOF comes once they are gone too.
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def output(self):
        with self._cond:
            return "\n".join(self.lines)

    def find_line(self, pattern, start=0):
        """The first line (from index ``start``) that matches regex ``pattern``, else None."""
        regex = re.compile(pattern)
        with self._cond:
            for line in self.lines[start:]:
                if regex.search(line):
                    return line
        return None

    def count_lines(self, pattern):
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines if regex.search(line))

    def wait_for_line(self, pattern, timeout=15.0, start=0):
        """Block until a line matching ``pattern`` appears; fail the test after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._eof and self.proc.poll() is not None):
                    break
                self._cond.wait(min(remaining, 0.2))
        pytest.fail(f"{self.name} (pid {self.pid}, exit {self.proc.poll()}) printed no line matching "
                    f"{pattern!r} within {timeout} s; output:\n{self.output()}")

    def first_line(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.lines:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    pytest.fail(f"{self.name} printed nothing within {timeout} s "
                                f"(exit {self.proc.poll()})")
                self._cond.wait(min(remaining, 0.2))
            return self.lines[0]

    def send_signal(self, sig):
        """Signal the process unless it has exited (never a reaped, maybe reused, pid)."""
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout=15.0):
        """The exit status; fails the test (after killing the group) on timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            pytest.fail(f"{self.name} (pid {self.pid}) did not exit within {timeout} s; output:\n"
                        f"{self.output()}")

    def alive(self):
        return self.proc.poll() is None

    def kill_group(self):
        """SIGKILL the process group (the process leads its own session), and reap."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def close(self):
        if self.alive():
            self.kill_group()
        self._reader.join(timeout=2)
        if self.proc.stdout:
            self.proc.stdout.close()


class LocalCluster:
    """A head and worker nodes started through the ``orion`` CLI; ``cleanup`` kills
    everything it started, whatever state it is in."""

    def __init__(self, env=None):
        self.tag = uuid.uuid4().hex[:6]
        self.env = env or {}
        self.head = None
        self.port = None
        self.address = None
        self.nodes = {}  # node id -> OrionProcess
        self._all = []

    def start_head(self, port=None, extra=()):
        self.port = port or free_port()
        self.head = OrionProcess("head", "--port", self.port, *HEARTBEAT_FLAGS, *extra,
                                 env=subprocess_env(**self.env), name="orion head")
        self._all.append(self.head)
        self.address = self.head.first_line()
        return self.head

    def node_id(self, name):
        """A node id unique to this cluster (so /proc scans see only our workers)."""
        return f"{name}-{self.tag}"

    def start_node(self, node_id, num_workers=1, env=None, address=None, extra=()):
        proc = OrionProcess("worker", "--address", address or self.address, "--num-workers", num_workers,
                            "--node-id", node_id, *HEARTBEAT_FLAGS, *extra,
                            env=subprocess_env(**{**self.env, **(env or {})}), name=f"orion worker {node_id}")
        self.nodes[node_id] = proc
        self._all.append(proc)
        return proc

    def status(self, timeout=30):
        result = run_orion("status", "--address", self.address, "--json", timeout=timeout)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["nodes"]

    def alive_nodes(self):
        return {n["node_id"]: n for n in self.status() if n["alive"]}

    def wait_registered(self, node_ids, timeout=20.0):
        """Wait until the head logged each node's registration and ``orion status`` shows it alive."""
        for node_id in node_ids:
            self.head.wait_for_line(rf"node {re.escape(node_id)} (re-)?registered", timeout)
        return wait_until(lambda: set(node_ids) <= set(self.alive_nodes()), timeout,
                          message=lambda: f"nodes {node_ids} not alive in status:\n{self.head.output()}")

    def all_worker_pids(self):
        pids = []
        for node_id in self.nodes:
            pids.extend(worker_pids(node_id))
        return pids

    def assert_no_orphans(self, timeout=10.0):
        """Every process we started is gone (nodes, head, worker processes) and the port is free."""
        wait_until(lambda: not self.all_worker_pids(), timeout,
                   message=lambda: f"orphan worker processes left: {self.all_worker_pids()}")
        for proc in self._all:
            assert not proc.alive(), f"{proc.name} still running"
        if self.port is not None:
            wait_until(lambda: port_is_free(self.port), timeout,
                       message=f"port {self.port} still in use after the head stopped")

    def cleanup(self):
        for proc in reversed(self._all):
            if proc.alive():
                proc.send_signal(signal.SIGCONT)  # a stopped process must be able to die
            proc.close()
        kill_pids(self.all_worker_pids(), signal.SIGCONT)
        kill_pids(self.all_worker_pids())
