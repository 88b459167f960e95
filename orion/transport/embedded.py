"""The embedded cluster of ``orion.init()``: a head and one node in this process's
threads, worker processes beside it, and a driver that calls the head directly.

The driver lives in the head's process, so it takes the short path: it calls
the ``Head`` under the server's lock instead of sending messages over loopback
(no msgpack, no socket hop), sends the resulting dispatches itself (no hop to
the server thread), and the head puts the driver's values straight into the
driver's store. Submits made while others are in flight (a loop) are left to
the server thread instead, which hands them to the head in one batch. Worker
processes still talk to the head over ZeroMQ.
The node's agent runs in this process too, so the driver maps large values
straight from the node's shared-memory store and writes its large puts there.
"""
from __future__ import annotations

import collections
import os
import sys
import uuid

from ..client import drained
from ..errors import OrionError
from ..log_printer import LogPrinter
from ..object_store import Holder, ObjectStore, Remote
from ..store.access import LocalNode, ObjectAccess
from .wire_client import SerializingClient
from .zmq_head import HeadServer
from .zmq_node import NodeAgent


_SUBMIT, _RELEASE = "submit", "release"  # kinds of deferred call


class EmbeddedClient(SerializingClient):
    def __init__(self, server, node, log_to_driver=True):
        super().__init__(ObjectStore())
        self.server = server
        self.node = node
        self.head = server.head
        self.address = server.address
        self.peer_id = "c:" + uuid.uuid4().hex[:16]
        # Calls kept for whoever takes the server's lock next, in call order:
        # ``(_SUBMIT, functions, specs)`` and ``(_RELEASE, ids)`` (see
        # _send_submit and _defer_release). A deque takes them from any thread.
        self._deferred = collections.deque()
        # Workers' output reaches us through a callback on the head's thread.
        self._log_printer = LogPrinter() if log_to_driver else None
        store = node.store
        self.local = LocalNode(node.node_id, store.shm_dir, store.spill_dir, store.memory_limit, store.sealed)
        self.objects = ObjectAccess(server.context, node.keys, self.local)
        with server.lock:
            server.transport.local_clients[self.peer_id] = self  # the head calls self.put_entry
            server.logs.local[self.peer_id] = (self._log_printer.print_records if log_to_driver
                                               else _drop_output)

    def put_entry(self, object_id, entry):
        """The head delivers a value or failure (under the server lock)."""
        if object_id in self._dropped:  # released before it arrived
            self._dropped.discard(object_id)
        else:
            self.store.put(object_id, entry)
        if object_id.endswith("0001") and object_id.startswith(self._prefix):
            self._settle()  # one of our tasks is done (its first return arrived)

    def _send_submit(self, specs, remote_function):
        in_flight = self._reserve(len(specs))
        functions = self._new_functions(remote_function)
        if in_flight:
            # Others of ours are in flight: we are likely submitting in a loop,
            # faster than tasks finish. Leave the submit to the server thread,
            # which hands the head all that piled up meanwhile in one lock
            # round and sends the dispatches together, one message per
            # worker: no lock round per task here, and larger batches each way.
            self._deferred.append((_SUBMIT, functions, specs))
            self._functions_sent(functions)  # (a later submit queues behind this one)
            self.server.wake()
            return
        # Nothing of ours in flight: someone waits for this task. Submit it and
        # send its dispatch from here, at once (the round trip's short path).
        with self.server.lock:
            self.hand_over_deferred()
            if functions:  # (registered before any submit may skip it)
                for function_id, blob in functions:
                    self.head.register_function(function_id, blob)
                self._functions_sent(functions)
            self.head.submit(specs)
            self.server.send_now()

    def _put_inline(self, object_id, value):
        self.store.put(object_id, value)
        with self.server.lock:
            self.hand_over_deferred()
            self.head.put(self.peer_id, object_id, value)
            self.server.send_now()

    def _put_large(self, object_id, value):
        node = self.node
        size = self.local.write(object_id, *value)
        self.store.put(object_id, Remote(size, (Holder(node.node_id, node.object_server.address),)))
        with self.server.lock:
            self.hand_over_deferred()
            self.head.put(self.peer_id, object_id, Remote(size, ()), node.node_id)
            self.server.send_now()
        return True

    def _send_lost(self, object_id, holder_ids):
        with self.server.lock:
            self.hand_over_deferred()
            self.head.unreachable(object_id, holder_ids)
            self.head.subscribe(self.peer_id, [object_id])
            self.server.send_now()

    def _request(self, object_ids):
        wanted = self._to_ask(object_ids)
        if wanted:
            with self.server.lock:
                self.hand_over_deferred()
                self.head.subscribe(self.peer_id, wanted)

    def _send_release(self, released, borrowed, unborrowed, contained):
        with self.server.lock:
            self.hand_over_deferred()
            self.head.refs(self.peer_id, released, borrowed, unborrowed, contained)
            self.server.send_now()  # nodes free their copies of large values

    def _defer_release(self, object_ids):
        # A submit follows, which the head hears of with the next lock round
        # anyway: these go with it (before it, so a large result may recycle a
        # released file), instead of in a lock round (and a wait for the
        # server thread to let go of it) of their own.
        self._deferred.append((_RELEASE, object_ids))
        return True

    def hand_over_deferred(self):
        """Give the head the deferred submits and releases, in call order;
        consecutive submits go as one batch. The caller holds the server's
        lock: this thread or the server thread, whichever takes it first."""
        if not self._deferred:  # (nearly always, on the server thread's every pass)
            return
        head = self.head
        specs = []
        for item in drained(self._deferred):
            if item[0] is _SUBMIT:
                for function_id, blob in item[1]:
                    head.register_function(function_id, blob)
                specs.extend(item[2])
                continue
            if specs:
                head.submit(specs)
                specs = []
            head.refs(self.peer_id, item[1])
        if specs:
            head.submit(specs)

    def _send_cancel(self, task_id, force):
        with self.server.lock:
            self.hand_over_deferred()
            self.head.cancel(task_id, force)
            self.server.send_now()

    def nodes(self):
        self._check_open()
        with self.server.lock:
            self.hand_over_deferred()
            return self.server.node_listing()

    def timeline_records(self):
        self._check_open()
        with self.server.lock:
            self.hand_over_deferred()
            return self.head.tasklog.records()

    def shutdown(self):
        if self.closed:
            return
        super().shutdown()
        with self.server.lock:
            self.head.closing = True  # the node's goodbye must not start rebuilding its objects
        self.node.stop()
        self.server.stop()
        if self._log_printer is not None:
            self._log_printer.close()


def _drop_output(records):
    pass  # orion.init(log_to_driver=False)


def start_embedded(num_workers, resources=None, *, policy="least_loaded", heartbeat_interval=None,
                   heartbeat_liveness=None, node_id=None, keys=None, log_to_driver=True, object_store_memory=None,
                   spill_dir=None):
    server = HeadServer("127.0.0.1", 0, heartbeat_interval=heartbeat_interval,
                        heartbeat_liveness=heartbeat_liveness, policy=policy, keys=keys, local_endpoint=True).start()
    # Worker processes must import what this process imports (test modules, the
    # script's own modules): give them our sys.path.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    node = NodeAgent(server.address, num_workers, resources, node_id or f"local-{os.getpid()}",
                     heartbeat_interval=server.interval, heartbeat_liveness=server.liveness,
                     worker_env=env, keys=keys, object_store_memory=object_store_memory,
                     spill_dir=spill_dir, worker_address=server.local_address).start()
    if not server.wait_for_nodes(1, timeout=10):
        node.stop()
        server.stop()
        raise OrionError("the embedded node did not register with its head within 10 s")
    with server.lock:
        server.transport.local_stores[node.node_id] = node.store
    return EmbeddedClient(server, node, log_to_driver=log_to_driver)
