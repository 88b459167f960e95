"""Garbage on the head's port must not hurt it.

Raw ZeroMQ DEALER sockets send malformed envelopes, messages meant for other
peers, messages from identities the head does not know and submissions with
malformed records; raw TCP connections send random bytes and hang up. After
all that the head still serves: a driver's tasks complete, ``orion.nodes()``
and ``orion status`` answer.
"""
from __future__ import annotations

import logging
import random
import signal
import socket
import time
import uuid

import msgpack
import pytest
import zmq

import orion
from orion.transport import protocol
from orion.transport.protocol import PROTOCOL_VERSION, SCHEMAS
from orion.transport.zmq_head import HeadServer

from helpers_cluster import LocalCluster, run_orion


@orion.remote
def square(x):
    return x * x


@orion.remote
def add(a, b):
    return a + b


def pack(*message):
    return msgpack.packb(list(message), use_bin_type=True)


def env(msg_type, body=()):
    return pack(PROTOCOL_VERSION, msg_type, list(body))


GOOD_RECORD = ["gt1", ["gt1.r0"], [], {"CPU": 1}, 0, "garbage", "gf1", 1, False, b"\x80\x05N.", 0, []]


def bad(index, value):
    record = list(GOOD_RECORD)
    record[index] = value
    return record


# Each entry: a list of frames (after the identity that the DEALER adds).
GARBAGE = [
    [b""],
    [b"\x00"],
    [b"\xc1\xc1\xc1"],
    [b"hello world", b"more", b"frames"],
    [msgpack.packb({"version": 1, "type": "hello"})],
    [msgpack.packb([1, "heartbeat"])],
    [pack(2, "heartbeat", [])],
    [pack(0, "nodes", [1])],
    [pack("1", "nodes", [1])],
    [pack(True, "nodes", [1])],
    [pack(1, 42, [])],
    [env("no_such_type")],
    [env("heartbeat", [1, 2, 3])],
    [env("nodes", ["1"])],
    [env("cancel", ["t", "yes"])],
    [b"\x91" * 50_000 + b"\xc0"],  # very deep nesting
    [b"\xdd\xff\xff\xff\xff"],  # announces a 4-billion-item array
    # messages the head sends, never receives
    [env("dispatch", [[]])],
    [env("objects", [[]])],
    [env("welcome", ["x", 1.0, 5])],
    [env("reregister")],
    [env("start_worker")],
    [env("stop_worker", ["w"])],
    [env("error", ["x"])],
    # worker messages from identities that are not registered workers
    [env("done", [[["t-unknown", [[b"\x80\x05N.", 0]], [1.0, 2.0]]]])],
    [env("done", [[["t-unknown", [[b"\x80\x05N.", 3]], [1.0, 2.0]]]])],
    [env("done", [[["t-unknown", [[b"\x80\x05N.", 0]], [2.0, 1.0]]]])],
    [env("done", [["not a record"]])],
    [env("failed", ["t-unknown", ["task_error", "boom", None], False, False, [1.0, 2.0]])],
    [env("failed", ["t-unknown", ["bogus", "boom", None], False, False, [1.0, 2.0]])],
    [env("blocked")],
    [env("unblocked")],
    # node messages from identities that are not registered nodes
    [env("worker_died", ["w-unknown", "killed"])],
    [env("register", ["someone-else", {"CPU": 1}, 1, "127.0.0.1", 1])],
    [env("register", ["n", {"CPU": -1}, 1, "127.0.0.1", 1])],
    [env("register", ["n", {1: 1}, 1, "127.0.0.1", 1])],
    [env("register", ["n", {"CPU": 1}, -3, "127.0.0.1", 1])],
    [env("hello", ["martian", "x", None, 1])],
    [env("hello", ["worker", "not-my-identity", "node", 1])],
    [env("hello", ["worker", "w", None, 1])],
    [env("goodbye")],
    [env("heartbeat")],
    # client messages with malformed contents
    [env("submit", [[], ["not a record"]])],
    [env("submit", [[], [GOOD_RECORD[:5]]])],
    [env("submit", [[], [bad(0, "")]])],
    [env("submit", [[], [bad(1, [])]])],
    [env("submit", [[], [bad(3, {"CPU": -1})]])],
    [env("submit", [[], [bad(3, {"CPU": float("nan")})]])],
    [env("submit", [[], [bad(4, -7)]])],
    [env("submit", [[], [bad(7, 3)]])],
    [env("submit", [[], [bad(10, 5)]])],  # announces buffers that are not there
    [env("submit", [[], [GOOD_RECORD]])],  # names a function that was never sent
    [env("submit", [[["gf1", "not bytes"]], [GOOD_RECORD]])],
    [env("submit", [[["gf1"]], [GOOD_RECORD]])],
    [env("submit", [[], [bad(10, 1)]]), b"one", b"too many"],
    [env("put", ["o-garbage", b"\x80\x05N.", 2]), b"only one buffer"],
    [env("subscribe", [[1, 2, 3]])],
    [env("release", [[None], [], [], []])],
    [env("release", [[], [None], [], []])],
    [env("release", [[], [], [], [["box", [None]]]])],
    [env("release", [[], [], [], [["box"]]])],
    [env("cancel", ["no-such-task", True])],
    [env("cancel", ["no-such-task", False])],
    [env("release", [["no-such-object"], ["no-such-object"], ["no-such-object"], [["no-such", ["object"]]]])],
    [env("subscribe", [["no-such-object-yet"]])],
]


def dealer(context, address, identity=None):
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(address)
    return sock


def receive_until(sock, predicate, timeout=10.0):
    """Messages from the head until one satisfies ``predicate`` (returned); None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sock.poll(remaining * 1000):
            return None
        try:
            message = protocol.decode(sock.recv_multipart())
        except protocol.ProtocolError:
            continue
        if predicate(message):
            return message


def send_zmq_garbage(address, seed=0):
    """Send every GARBAGE message from several kinds of identity, plus random frames."""
    rng = random.Random(seed)
    context = zmq.Context()
    sockets = []
    try:
        identities = [None, b"c:garbage-" + uuid.uuid4().hex[:6].encode(), b"w:ghost-worker",
                      b"n:ghost-node", b"\xffbinary-identity", b"x" * 200]
        for identity in identities:
            sock = dealer(context, address, identity)
            sockets.append(sock)
            for frames in GARBAGE:
                sock.send_multipart(frames)
            for _ in range(100):
                sock.send_multipart([rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randint(1, 3))])
        # Other ZeroMQ socket types: a REQ (adds an empty delimiter frame) and a PUB (not
        # even a compatible socket type for a ROUTER: the handshake fails).
        req = context.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(address)
        req.send(env("nodes", [1]))
        sockets.append(req)
        pub = context.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.connect(address)
        pub.send(b"garbage")
        sockets.append(pub)

        # A c: peer that sent garbage is told so, and can still talk sense afterwards.
        client = sockets[1]
        reply = receive_until(client, lambda m: m[0] == "error")
        assert reply is not None and "malformed" in reply[1][0]
        client.send_multipart(protocol.encode("nodes", [99]))
        reply = receive_until(client, lambda m: m[0] == "nodes_reply" and m[1][0] == 99)
        assert reply is not None, "the head stopped answering a peer that had sent garbage"
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()


def send_tcp_garbage(port, seed=0):
    """Raw TCP: random bytes, HTTP, a fake ZMTP greeting, silence, huge blobs; then hang up."""
    rng = random.Random(seed)
    payloads = [b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00NULL" + b"\x00" * 60,
                b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f" + rng.randbytes(500), rng.randbytes(1 << 20)]
    payloads += [rng.randbytes(rng.randrange(1, 4096)) for _ in range(20)]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                sock.sendall(payload)
            except OSError:  # the head may hang up on us first: fine
                pass
    # Half-open: connect, send a little, leave it hanging while the head keeps working.
    hanging = socket.create_connection(("127.0.0.1", port), timeout=5)
    hanging.sendall(b"\xff\x00\x00")
    return hanging


def check_head_serves(address):
    refs = [square.remote(i) for i in range(20)]
    total = add.remote(refs[3], refs[4])
    assert orion.get(refs, timeout=30) == [i * i for i in range(20)]
    assert orion.get(total, timeout=30) == 9 + 16
    assert [n["alive"] for n in orion.nodes()] == [True]
    result = run_orion("status", "--address", address, "--json")
    assert result.returncode == 0, result.stderr


def embedded_head():
    """The in-process ``HeadServer`` of ``orion.init()``'s embedded cluster (None if unreachable)."""
    client = orion.api._current_client()
    server = getattr(client, "server", None)
    if server is None:
        server = next((c for c in getattr(client, "_owned", ()) if hasattr(c, "router")), None)
    return server


def test_zmq_garbage_does_not_hurt_the_head():
    info = orion.init(num_workers=1)
    try:
        server = embedded_head()
        assert orion.get(square.remote(3), timeout=30) == 9
        send_zmq_garbage(info.address)
        check_head_serves(info.address)
        if server is not None:
            assert server._life.thread.is_alive()
            assert server._bad_messages >= len(GARBAGE)
    finally:
        orion.shutdown()


def test_a_garbage_task_fails_only_itself():
    """A well-formed submit whose function and arguments are not pickles: the task fails
    with an error that goes back to its submitter; the worker and the head carry on."""
    info = orion.init(num_workers=1)
    context = zmq.Context()
    sock = dealer(context, info.address, b"c:garbage-submitter")
    try:
        sock.send_multipart(protocol.encode("hello", ["client", "c:garbage-submitter", None, 1]))
        assert receive_until(sock, lambda m: m[0] == "welcome") is not None
        record = ["gt-1", ["gt-1.r"], [], {"CPU": 1}, 0, "garbage_task", "gf-not-a-pickle", 1, False,
                  b"not a pickle either", 0, []]
        sock.send_multipart(protocol.encode("submit", [[["gf-not-a-pickle", b"\x00garbage"]], [record]]))
        message = receive_until(sock, lambda m: m[0] == "objects", timeout=20)
        assert message is not None, "the garbage task's failure never came back"
        [[object_id, ok, failure, nbuf]] = message[1][0]
        assert (object_id, ok, failure[0]) == ("gt-1.r", False, "task_error")
        check_head_serves(info.address)
    finally:
        sock.close(linger=0)
        context.term()
        orion.shutdown()


@pytest.mark.timeout(40)
def test_tcp_and_zmq_garbage_against_a_cli_head():
    cluster = LocalCluster()
    try:
        cluster.start_head()
        node_id = cluster.node_id("g")
        cluster.start_node(node_id, num_workers=1)
        cluster.wait_registered([node_id])
        hanging = send_tcp_garbage(cluster.port)
        try:
            send_zmq_garbage(cluster.address, seed=1)
            orion.init(address=cluster.address)
            check_head_serves(cluster.address)
        finally:
            hanging.close()
            orion.shutdown()
        # The head logged the garbage but did not log any error of its own.
        assert cluster.head.count_lines("dropped a malformed message") >= 1
        assert "Traceback" not in cluster.head.output()
        assert cluster.head.alive()
        for proc in cluster.nodes.values():
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        cluster.head.send_signal(signal.SIGTERM)
        assert cluster.head.wait(10) == 0, cluster.head.output()
        cluster.assert_no_orphans()
    finally:
        cluster.cleanup()


def _mutations(rng, count):
    """``count`` (message type, body, buffers): valid messages with fields swapped for junk."""
    junk = [None, True, False, -1, 0, 1, 2, 0.5, -0.5, float("inf"), "", "t-fuzz", "fuzz-w1", "fuzz", "f-fuzz",
            b"", b"\x80\x05N.", [], [[]], {}, {"CPU": 1}, {"CPU": -1}, [["f-fuzz", b"\x80\x05N."]],
            [[b"\x80\x05N.", 0]], ["task_error", "m", None], [["o", True, b"h", 0]]]
    record = ["t-fuzz", ["t-fuzz.r"], [], {"CPU": 1}, 1, "fuzz", "f-fuzz", 1, False, b"\x80\x05N.", 0, []]
    valid = {
        "hello": ["client", "c:fuzz", None, 1], "goodbye": [], "heartbeat": [],
        "submit": [[["f-fuzz", b"\x80\x05N."]], [record]], "put": ["o-fuzz", b"\x80\x05N.", 0],
        "subscribe": [["t-fuzz.r"]], "cancel": ["t-fuzz", False], "release": [["t-fuzz.r"], [], [], []], "nodes": [1],
        "blocked": [[]], "unblocked": [], "done": [[["t-fuzz", [[b"\x80\x05N.", 0]], [1.0, 2.0]]]],
        "failed": ["t-fuzz", ["task_error", "m", None], True, False, [1.0, 2.0]], "status": [1], "timeline": [1],
        "register": ["fuzz", {"CPU": 1}, 1, "127.0.0.1", 1], "worker_died": ["fuzz-w1", "gone"],
    }
    for _ in range(count):
        msg_type = rng.choice(sorted(valid))
        body = [rng.choice(junk) if rng.random() < 0.3 else field for field in valid[msg_type]]
        if msg_type == "submit" and rng.random() < 0.5:
            body = [body[0], [[rng.choice(junk) if rng.random() < 0.15 else f for f in record]]]
        yield msg_type, body, [b"x"] * rng.randrange(3)


def fake_peers(context, server, name, sockets):
    """A fake node ``name`` with one worker, and a client, as DEALERs on
    ``server`` (appended to ``sockets`` as they are made, for the caller to
    close): ``(node, worker, client)``, the node registered and the client
    welcomed."""
    for identity in (f"n:{name}", f"w:{name}-w1", f"c:{name}"):
        sockets.append(dealer(context, server.address, identity.encode()))
    node, worker, client = sockets[-3:]
    node.send_multipart(protocol.encode("register", [name, {"CPU": 1}, 1, "127.0.0.1", 1,
                                                     {"address": "tcp://127.0.0.1:1"}]))
    assert receive_until(node, lambda m: m[0] == "registered") is not None
    worker.send_multipart(protocol.encode("hello", ["worker", f"{name}-w1", name, 2]))
    client.send_multipart(protocol.encode("hello", ["client", f"c:{name}", None, 3]))
    assert receive_until(client, lambda m: m[0] == "welcome") is not None
    return node, worker, client


def test_fuzzed_messages_from_registered_peers(caplog):
    """A registered (fake) node, worker and client send thousands of valid-looking messages
    with junk fields: the head answers with errors, never fails inside, and keeps serving."""
    caplog.set_level(logging.WARNING, logger="orion.head")
    server = HeadServer("127.0.0.1", 0, heartbeat_interval=5).start()
    context = zmq.Context()
    sockets = []
    try:
        node, worker, client = fake_peers(context, server, "fuzz", sockets)
        rng = random.Random(1234)
        for msg_type, body, buffers in _mutations(rng, 3000):
            assert msg_type in SCHEMAS
            rng.choice((node, worker, client)).send_multipart(protocol.encode(msg_type, body, buffers))
        # Each peer's messages are handled in order: a reply to the last means all were handled.
        for request_id, sock in enumerate((node, worker, client)):
            sock.send_multipart(protocol.encode("nodes", [1000 + request_id]))
            reply = receive_until(sock, lambda m, r=request_id: m[0] == "nodes_reply" and m[1][0] == 1000 + r,
                                  timeout=30)
            assert reply is not None, "the head stopped answering"
        assert server._life.thread.is_alive()
        messages = [r.getMessage() for r in caplog.records]
        assert any("dropped a malformed message" in m for m in messages)  # the log is captured
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], errors[:3]
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()
        server.stop()


def test_a_done_with_a_wrong_value_count_fails_only_that_task():
    """A worker reports two tasks in one ``done``, one of them with two values
    for a task that returns one: that task fails (its caller must not hang),
    the other's value is delivered, and the worker gets its next task."""
    server = HeadServer("127.0.0.1", 0, heartbeat_interval=5).start()
    context = zmq.Context()
    sockets = []
    try:
        node, worker, client = fake_peers(context, server, "cnt", sockets)
        records = [[f"ct-{i}", [f"ct-{i}.r"], [], {"CPU": 1}, 0, "f", "cf", 1, False, b"args", 0, []]
                   for i in range(3)]
        client.send_multipart(protocol.encode("submit", [[["cf", b"function"]], records]))
        # One worker, three tasks: the first runs, the second is queued behind it.
        dispatched = []
        while len(dispatched) < 2:
            message = receive_until(worker, lambda m: m[0] == "dispatch")
            assert message is not None, f"only {dispatched} were dispatched"
            dispatched += [record[0] for record in message[1][0]]
        assert dispatched == ["ct-0", "ct-1"]
        times = [1.0, 2.0]
        worker.send_multipart(protocol.encode("done", [[["ct-0", [[b"zero", 0]], times],
                                                        ["ct-1", [[b"one", 0], [b"extra", 0]], times]]]))
        values = {}
        while len(values) < 2:
            message = receive_until(client, lambda m: m[0] == "objects")
            assert message is not None, f"only {values} came back"
            for object_id, ok, value, _ in message[1][0]:
                values[object_id] = (ok, value)
        assert values["ct-0.r"] == (True, b"zero")
        ok, failure = values["ct-1.r"]
        assert not ok and failure[0] == "task_error" and "sent 2 results" in failure[1]
        message = receive_until(worker, lambda m: m[0] == "dispatch")
        assert message is not None and [record[0] for record in message[1][0]] == ["ct-2"]
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()
        server.stop()
