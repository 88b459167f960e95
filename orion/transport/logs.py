"""Worker output on its way to the driver: the ``logs`` records and the head's forwarder.

A worker sends ``logs`` with ``[[task id, task name, stream, line]...]``
(``orion.transport.task_output`` collects them). The head adds who printed
them and forwards each line to the owner of its task (the peer that submitted
it) as ``logs`` with ``[[task id, worker pid, node id, task name, stream,
line]...]``; an in-process driver gets them through a callback instead.
Lines of tasks whose owner is gone are dropped.
"""
from __future__ import annotations

import logging

from . import protocol
from .protocol import ProtocolError, check

log = logging.getLogger("orion.head")

STREAMS = ("stdout", "stderr")


def decode_worker_records(raw):
    """``[[task id, task name, stream, line]...]`` from a worker; ProtocolError if malformed."""
    check(isinstance(raw, list), "logs must be a list of records")
    for record in raw:
        check(isinstance(record, list) and len(record) == 4, "a log record must be [task id, name, stream, line]")
        task_id, name, stream, line = record
        check(isinstance(task_id, str) and isinstance(name, str) and isinstance(line, str),
              "task id, name and line of a log record must be strings")
        check(stream in STREAMS, f"log stream must be stdout or stderr, got {stream!r}")
    return raw


def decode_peer_records(raw):
    """``[[task id, pid, node id, task name, stream, line]...]`` from the head."""
    check(isinstance(raw, list), "logs must be a list of records")
    for record in raw:
        check(isinstance(record, list) and len(record) == 6,
              "a log record must be [task id, pid, node id, name, stream, line]")
        task_id, pid, node_id, name, stream, line = record
        check(isinstance(task_id, str) and isinstance(node_id, str) and isinstance(name, str)
              and isinstance(line, str), "task id, node id, name and line of a log record must be strings")
        check(isinstance(pid, int) and not isinstance(pid, bool), "the pid of a log record must be an int")
        check(stream in STREAMS, f"log stream must be stdout or stderr, got {stream!r}")
    return raw


class LogForwarder:
    """The head's part: route each worker's lines to the owners of their tasks."""

    def __init__(self, server):
        self.server = server
        self.local = {}  # peer id -> callable(records): drivers in the head's process
        self.pids = {}  # worker id -> pid (from its hello)

    def worker_hello(self, worker_id, pid):
        self.pids[worker_id] = pid

    def worker_gone(self, worker_id):
        self.pids.pop(worker_id, None)

    def on_logs(self, identity, body, buffers):
        if identity[:2] != b"w:":
            raise ProtocolError("only worker processes send logs")
        records = decode_worker_records(body[0])
        worker_id = identity[2:].decode("latin-1")
        server = self.server
        node_id = server.worker_nodes.get(worker_id)
        if node_id is None:
            return  # a worker that was lost: its task runs again elsewhere
        pid = self.pids.get(worker_id, 0)
        owners = server.head.owners
        by_owner = {}
        for task_id, name, stream, line in records:
            owner = owners.get(task_id + "0001")  # the task's first return id (orion.ids)
            if owner is not None:
                by_owner.setdefault(owner, []).append([task_id, pid, node_id, name, stream, line])
        for owner, lines in by_owner.items():
            callback = self.local.get(owner)
            if callback is not None:
                try:
                    callback(lines)
                except Exception:  # printing must never take the head down
                    log.exception("printing worker output failed")
            else:
                server.transport.singles.append((owner.encode("latin-1"), protocol.encode("logs", [lines])))
