"""Security and hardening over real processes: CURVE keys, refusing to listen in
the open, oversized frames, floods of garbage and of submissions."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time

import cloudpickle
import msgpack
import pytest
import zmq

import orion
from helpers_cluster import free_port, orion_command, run_orion, wait_until
from orion import ids
from orion.client import Client
from orion.transport import protocol

pytestmark = pytest.mark.timeout(120)


@orion.remote
def add_one(x):
    return x + 1


@orion.remote
def noop():
    return None


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.fixture
def keys(tmp_path):
    good, bad = tmp_path / "keys", tmp_path / "other-keys"
    assert run_orion("keygen", good).returncode == 0
    assert run_orion("keygen", bad).returncode == 0
    return str(good), str(bad)


@pytest.fixture
def cluster(local_cluster):
    """A head and nodes started through the CLI (conftest's ``local_cluster``)."""
    return local_cluster


def start_keyed(cluster, key_dir):
    cluster.start_head(extra=("--keys", key_dir))
    node_id = cluster.node_id("sec")
    cluster.start_node(node_id, num_workers=1, extra=("--keys", key_dir))
    cluster.head.wait_for_line(rf"node {node_id} registered", 30)
    return node_id


def submit_raw(address, marker, curve_keys=None):
    """A peer speaking the protocol directly: asks the head to run a function
    that would create ``marker``. Returns the socket's context (to close)."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"c:intruder")
    if curve_keys is not None:
        from orion import security
        security.ClusterKeys(curve_keys).as_client(sock)
    sock.connect(address)

    def evil():
        open(marker, "w").close()

    task_id = ids.new_task_id()
    record = [task_id, [task_id + "0001"], [], {"CPU": 1.0}, 0, "evil", "evilfn", 1, False,
              cloudpickle.dumps(((), {})), 0, []]
    sock.send_multipart(protocol.encode("hello", ["client", "c:intruder", None, os.getpid()]), zmq.NOBLOCK)
    sock.send_multipart(protocol.encode("submit", [[["evilfn", cloudpickle.dumps(evil)]], [record]]),
                        zmq.NOBLOCK)
    return context, sock


@pytest.mark.parametrize("which", ["no keys", "wrong keys"])
def test_a_peer_without_the_right_keys_cannot_run_a_task(cluster, keys, tmp_path, which):
    good, bad = keys
    start_keyed(cluster, good)
    marker = tmp_path / "ran"
    context, sock = submit_raw(cluster.address, str(marker), None if which == "no keys" else bad)
    try:
        cluster.head.wait_for_line("refused a connection", 20)
        # The cluster does run work for a keyed driver meanwhile...
        orion.init(address=cluster.address, keys=good)
        assert orion.get(add_one.remote(1), timeout=30) == 2
        assert orion.get(add_one.remote(2), timeout=30) == 3
        # ...but the intruder's function never ran, and it got no answer.
        assert not marker.exists()
        assert sock.poll(200) == 0
    finally:
        sock.close(0)
        context.term()
    # A driver without keys cannot connect (and says what to do); status is refused too.
    orion.shutdown()
    with pytest.raises(orion.OrionError, match="keys"):
        _connect_without_keys(cluster)
    assert run_orion("status", "--address", cluster.address, "--timeout", "1").returncode == 1
    assert run_orion("status", "--address", cluster.address, "--keys", bad, "--timeout", "1").returncode == 1
    assert run_orion("status", "--address", cluster.address, "--keys", good).returncode == 0


def _connect_without_keys(cluster):
    from orion.transport.zmq_client import ZmqClient
    ZmqClient(cluster.address, connect_timeout=1.5)


def test_head_refuses_to_listen_in_the_open_without_keys(keys):
    result = run_orion("head", "--host", "0.0.0.0", "--port", free_port(), timeout=20)
    assert result.returncode == 2
    assert "orion keygen" in result.stderr and "--keys" in result.stderr
    # With keys it starts (and stops cleanly).
    port = free_port()
    proc = subprocess.Popen(orion_command("head", "--host", "0.0.0.0", "--port", port, "--keys", keys[0]),
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == f"tcp://0.0.0.0:{port}"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def zmtp_null_handshake(sock):
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    sock.sendall(greeting)
    body = b"\x05READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"DEALER"
    sock.sendall(bytes([0x04, len(body)]) + body)


def test_a_2gb_declared_message_is_refused_without_allocating(cluster):
    cluster.start_head()
    head_pid = cluster.head.pid
    before = rss_mb(head_pid)
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=10) as raw:
        zmtp_null_handshake(raw)
        # One frame that declares 2 GiB, then a trickle of bytes.
        raw.sendall(bytes([0x02]) + struct.pack(">Q", 2 << 30) + b"x" * 65536)
        raw.settimeout(10)
        closed = False
        try:
            while raw.recv(65536):
                pass
            closed = True
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        assert closed, "the head kept a connection that declared a 2 GiB frame"
    assert rss_mb(head_pid) - before < 100
    assert run_orion("status", "--address", cluster.address).returncode == 0  # still serving


def test_garbage_flood_from_one_socket_does_not_stop_a_driver(cluster):
    cluster.start_head()
    node_id = cluster.node_id("flood")
    cluster.start_node(node_id, num_workers=2)
    cluster.wait_registered([node_id])
    orion.init(address=cluster.address)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"c:garbage")
    sock.connect(cluster.address)
    try:
        refs = [add_one.remote(i) for i in range(1000)]
        junk = [b"\x00garbage", msgpack.packb([1, "done", ["t", []]]), msgpack.packb([99, "hello", []]),
                msgpack.packb([1, "nope", []]), os.urandom(64)]
        for i in range(10_000):
            sock.send(junk[i % len(junk)])
        assert orion.get(refs, timeout=90) == [i + 1 for i in range(1000)]
    finally:
        sock.close(0)
        context.term()


def test_submission_floods_get_back_pressure_and_head_memory_stays_bounded(cluster, monkeypatch):
    cluster.env["ORION_MAX_UNFINISHED_PER_OWNER"] = "20000"
    cluster.start_head()  # no nodes: nothing runs, everything queues
    head_pid = cluster.head.pid
    base = rss_mb(head_pid)
    # A peer that ignores back-pressure floods 1,000,000 submissions: the head
    # queues up to its per-peer limit and refuses the rest at once.
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"c:flooder")
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.connect(cluster.address)
    refused = 0
    args = cloudpickle.dumps(((), {}))
    try:
        sock.send_multipart(protocol.encode("hello", ["client", "c:flooder", None, os.getpid()]))
        functions = [["noopfn", cloudpickle.dumps(lambda: None)]]
        for batch in range(1000):
            records = []
            for _ in range(1000):
                task_id = ids.new_task_id()
                records.append([task_id, [task_id + "0001"], [], {"CPU": 1.0}, 0, "", "noopfn", 1, False, args, 0, []])
            sock.send_multipart(protocol.encode("submit", [functions if batch == 0 else [], records]))
            while sock.poll(0):
                frames = sock.recv_multipart()
                msg_type, body, _ = protocol.decode(frames)
                if msg_type == "objects":
                    refused += sum(1 for item in body[0] if not item[1])
        expected_refusals = 1_000_000 - 20_000
        refused += _drain_until(sock, expected_refusals - refused)
        assert refused >= expected_refusals
        assert rss_mb(head_pid) - base < 300, f"head grew by {rss_mb(head_pid) - base:.0f} MB"
    finally:
        sock.close(0)
        context.term()
    # A well-behaved driver is held back by its own limit: .remote blocks.
    monkeypatch.setattr(Client, "max_unfinished", 50)
    orion.init(address=cluster.address)
    submitted = []
    flooder = threading.Thread(target=lambda: [submitted.append(noop.remote()) for _ in range(200)], daemon=True)
    flooder.start()
    wait_until(lambda: len(submitted) >= 50, 20)
    flooder.join(0.5)
    assert flooder.is_alive() and len(submitted) == 50  # blocked at the limit
    node_id = cluster.node_id("late")
    cluster.start_node(node_id, num_workers=2)  # capacity arrives: the driver carries on
    flooder.join(60)
    assert not flooder.is_alive() and len(submitted) == 200
    assert orion.get(submitted, timeout=60) == [None] * 200


def _drain_until(sock, wanted):
    """Read refusal replies until ``wanted`` more arrived (or 60 s passed)."""
    got = 0
    deadline = time.monotonic() + 60
    while got < wanted and time.monotonic() < deadline:
        if not sock.poll(1000):
            continue
        msg_type, body, _ = protocol.decode(sock.recv_multipart())
        if msg_type == "objects":
            got += sum(1 for item in body[0] if not item[1])
    return got


@orion.remote
def unpicklable_here():
    import sys
    import types
    module = types.ModuleType("only_in_the_worker")
    exec("class Thing:\n    pass\n", module.__dict__)
    sys.modules["only_in_the_worker"] = module
    return module.Thing()


@pytest.mark.parametrize("transport", ["zmq"])
def test_a_result_the_driver_cannot_unpickle_fails_that_ref_only(transport):
    with orion.init(num_workers=1):
        bad, good = unpicklable_here.remote(), add_one.remote(1)
        with pytest.raises(orion.OrionError, match="cannot be unpickled here"):
            orion.get(bad, timeout=30)
        assert orion.get(good, timeout=30) == 2


def test_a_flood_of_connections_does_not_stop_the_head_serving_others(cluster):
    cluster.start_head()
    node_id = cluster.node_id("conns")
    cluster.start_node(node_id, num_workers=2)
    cluster.wait_registered([node_id])
    hogs = []
    try:
        for i in range(300):  # idle, half-open and half-handshaken connections from one peer
            raw = socket.create_connection(("127.0.0.1", cluster.port), timeout=10)
            if i % 2:
                raw.sendall(b"\xff" + b"\x00" * 8)
            hogs.append(raw)
        orion.init(address=cluster.address)
        assert orion.get([add_one.remote(i) for i in range(200)], timeout=60) == list(range(1, 201))
        assert run_orion("status", "--address", cluster.address).returncode == 0
    finally:
        for raw in hogs:
            raw.close()
