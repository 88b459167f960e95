"""The object server and the two fetches (orion.store.transfer) over real
localhost sockets: one message, and in parts straight into a node's store."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import zmq

from orion import serialization
from orion.object_store import Holder, Remote
from orion.store import NodeStore, transfer
from orion.store.access import STREAM_MIN, LocalNode, ObjectAccess
from orion.transport import protocol

pytestmark = pytest.mark.timeout(60)


class Served:
    """An ObjectServer answering from a dict, on a thread of its own."""

    def __init__(self, context, values):
        self.server = transfer.ObjectServer(context, "127.0.0.1", values.get)
        self.address = self.server.address
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        poller = zmq.Poller()
        poller.register(self.server.socket, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(50):
                self.server.handle_ready()
        self.server.close()

    def close(self):
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
def local(tmp_path):
    store = NodeStore("node-b", memory_limit=1 << 30, shm_root=str(tmp_path / "shm"), spill_dir=str(tmp_path / "spill"))
    sealed = []
    node = LocalNode("node-b", store.shm_dir, store.spill_dir, store.memory_limit, lambda *a: sealed.append(a))
    yield node
    store.close()


def value_of(*arrays):
    header, buffers = serialization.dumps(list(arrays))
    return header, [memoryview(b).cast("B") for b in buffers]


def leftovers(node):
    return [name for name in os.listdir(node.shm_dir) if ".tmp-" in name]


def test_fetch_in_parts_writes_every_buffer_into_the_store(context, local):
    # Parts that do not divide the buffers evenly, an empty buffer, several buffers.
    arrays = (np.arange(300_001, dtype=np.uint8), np.empty(0), np.arange(70_000, dtype=np.float64))
    served = Served(context, {"obj": value_of(*arrays)})
    try:
        size = transfer.fetch_into(context, served.address, "obj",
                                   lambda header, lengths: local.writer("obj", header, lengths),
                                   part_bytes=transfer.MIN_PART_BYTES)
    finally:
        served.close()
    header, buffers = local.open("obj")
    got = serialization.loads(header, buffers)
    assert all(np.array_equal(a, b) for a, b in zip(got, arrays))
    assert size == os.path.getsize(os.path.join(local.shm_dir, "obj"))
    assert leftovers(local) == []


def test_missing_object_fails_both_fetches_and_writes_nothing(context, local):
    served = Served(context, {})
    try:
        with pytest.raises(transfer.FetchError, match="does not hold"):
            transfer.fetch(context, served.address, "gone")
        with pytest.raises(transfer.FetchError, match="does not hold"):
            transfer.fetch_into(context, served.address, "gone", lambda h, n: local.writer("gone", h, n))
    finally:
        served.close()
    assert [name for name in os.listdir(local.shm_dir) if not name.startswith(".")] == []


class FakeServer:
    """A ROUTER that answers the first request with ``answers`` (lists of
    frames), then stays connected until closed (its thread owns the socket)."""

    def __init__(self, context, answers):
        self._stop = threading.Event()
        bound = threading.Event()
        self.address = None

        def serve():
            sock = context.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            self.address = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
            bound.set()
            try:
                if sock.poll(10_000):
                    identity, *_ = sock.recv_multipart()
                    for frames in answers:
                        sock.send_multipart([identity, *frames])
                self._stop.wait(10)
            finally:
                sock.close(linger=0)

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        bound.wait(5)

    def close(self):
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize("bad_part", [
    protocol.encode("part", [0, 65536], [b"x" * 65536]),      # out of order
    protocol.encode("part", [0, 0], [b"x" * 10]),             # short
    protocol.encode("part", [0, 0]),                          # no bytes
    protocol.encode("missing", ["obj", "changed my mind"]),   # not a part
    [b"garbage"],
])
def test_malformed_parts_fail_the_fetch_and_leave_no_file(context, local, bad_part):
    header = serialization.dumps(b"")[0]
    fake = FakeServer(context, [protocol.encode("object_parts", ["obj", header, [200_000]]), bad_part])
    try:
        with pytest.raises(transfer.FetchError, match="malformed"):
            transfer.fetch_into(context, fake.address, "obj", lambda h, n: local.writer("obj", h, n),
                                part_bytes=transfer.MIN_PART_BYTES, timeout=5)
    finally:
        fake.close()
    assert leftovers(local) == [] and "obj" not in os.listdir(local.shm_dir)


def test_a_holder_that_stops_mid_object_times_out_and_leaves_no_file(context, local):
    header = serialization.dumps(b"")[0]
    fake = FakeServer(context, [protocol.encode("object_parts", ["obj", header, [200_000]])])
    try:
        with pytest.raises(transfer.FetchError, match="within"):
            transfer.fetch_into(context, fake.address, "obj", lambda h, n: local.writer("obj", h, n), timeout=0.3)
    finally:
        fake.close()
    assert leftovers(local) == []


def test_bad_part_size_in_a_request_is_refused(context):
    served = Served(context, {"obj": value_of(np.ones(10))})
    try:
        with pytest.raises(transfer.FetchError, match="refused the request"):
            transfer.fetch_into(context, served.address, "obj", lambda h, n: None, part_bytes=10)
    finally:
        served.close()


def test_worker_access_streams_large_values_into_its_store(context, local):
    big = np.arange(STREAM_MIN // 8 + 1000, dtype=np.float64)
    small = np.arange(1000, dtype=np.float64)
    served = Served(context, {"big": value_of(big), "small": value_of(small)})
    access = ObjectAccess(context, None, local, keep_copies=True)
    try:
        header, buffers, keep = access.read("big", Remote(STREAM_MIN + 9000, (Holder("node-a", served.address),)))
        assert np.array_equal(serialization.loads(header, buffers)[0], big)
        assert os.path.exists(os.path.join(local.shm_dir, "big"))  # before ``keep``: it is the value's file
        assert keep() == os.path.getsize(os.path.join(local.shm_dir, "big"))
        header, buffers, keep = access.read("small", Remote(9000, (Holder("node-a", served.address),)))
        assert np.array_equal(serialization.loads(header, buffers)[0], small)
        assert not os.path.exists(os.path.join(local.shm_dir, "small"))  # one message; kept by ``keep``
        keep()
        assert os.path.exists(os.path.join(local.shm_dir, "small"))
    finally:
        served.close()


def test_worker_access_falls_back_to_memory_when_its_store_has_no_room(context, local, monkeypatch):
    big = np.arange(STREAM_MIN // 8 + 1000, dtype=np.float64)
    served = Served(context, {"big": value_of(big)})

    def no_room(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(local, "writer", no_room)
    access = ObjectAccess(context, None, local, keep_copies=True)
    try:
        header, buffers, keep = access.read("big", Remote(STREAM_MIN + 9000, (Holder("node-a", served.address),)))
        assert np.array_equal(serialization.loads(header, buffers)[0], big)
    finally:
        served.close()
