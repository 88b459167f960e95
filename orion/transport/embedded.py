"""The embedded cluster of ``orion.init()``: a head and one node in this process's
threads, worker processes beside it, and a client connected over loopback."""
from __future__ import annotations

import os
import sys

from ..errors import OrionError
from .zmq_client import ZmqClient
from .zmq_head import HeadServer
from .zmq_node import NodeAgent


def start_embedded(num_workers, resources=None, *, policy="least_loaded", heartbeat_interval=None,
                   heartbeat_liveness=None, node_id=None):
    server = HeadServer("127.0.0.1", 0, heartbeat_interval=heartbeat_interval,
                        heartbeat_liveness=heartbeat_liveness, policy=policy).start()
    # Worker processes must import what this process imports (test modules, the
    # script's own modules): give them our sys.path.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    node = NodeAgent(server.address, num_workers, resources, node_id or f"local-{os.getpid()}",
                     heartbeat_interval=server.interval, heartbeat_liveness=server.liveness,
                     worker_env=env).start()
    if not server.wait_for_nodes(1, timeout=10):
        node.stop()
        server.stop()
        raise OrionError("the embedded node did not register with its head within 10 s")
    try:
        return ZmqClient(server.address, owned=[node, server])
    except Exception:
        node.stop()
        server.stop()
        raise
