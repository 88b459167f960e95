"""A real Orion cluster as subprocesses, for benchmarks that need one.

``orion head --port P`` plus one ``orion worker --address ...`` process per
node, each in its own process session so that closing can signal the node's
worker processes too. Used by ``objects.py`` (two one-worker nodes pinned by
resources) and ``scaling.py`` (the head in a process of its own).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SubprocessCluster:
    """Start ``orion head`` and the given nodes; ``address`` is the head's.

    ``nodes`` is a list of dicts with ``num_workers`` and optionally
    ``node_id`` and ``resources``. Call ``join(orion)`` to connect the driver
    and wait until every node has registered, and ``close()`` to stop it all.
    """

    def __init__(self, nodes):
        self.procs = []
        self.tmp = tempfile.TemporaryDirectory(prefix="orion-bench-")
        self.nodes = nodes
        cli = [sys.executable, "-m", "orion.cli"]
        try:
            head_log = os.path.join(self.tmp.name, "head.log")
            self._spawn(cli + ["head", "--port", str(free_port())], head_log)
            self.head_pid = self.procs[0].pid
            self.address = self._first_line(head_log, self.procs[0])
            for i, node in enumerate(nodes):
                argv = cli + ["worker", "--address", self.address,
                              "--num-workers", str(node["num_workers"])]
                if "node_id" in node:
                    argv += ["--node-id", node["node_id"]]
                if "resources" in node:
                    argv += ["--resources", json.dumps(node["resources"])]
                self._spawn(argv, os.path.join(self.tmp.name, f"node-{i}.log"))
        except BaseException:
            self.close()
            raise

    def join(self, orion, timeout=60):
        """``orion.init(address=...)``, then wait until every node is alive."""
        orion.init(address=self.address)
        deadline = time.monotonic() + timeout
        while sum(n["alive"] for n in orion.nodes()) < len(self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker nodes did not register; logs in {self.tmp.name}")
            time.sleep(0.05)

    def _spawn(self, argv, log_path):
        with open(log_path, "wb") as log:
            # Own session: a signal to the group reaches the node's worker processes too.
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True))

    @staticmethod
    def _first_line(path, proc):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(path) as f:
                line = f.readline().strip()
            if line.startswith("tcp://"):
                return line
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        with open(path) as f:
            raise RuntimeError(f"orion head printed no address:\n{f.read()}")

    def close(self):
        for proc in reversed(self.procs):   # the nodes first, then the head
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for proc in self.procs:             # stragglers in the node's group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.tmp.cleanup()
