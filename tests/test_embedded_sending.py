"""Who sends an embedded driver's dispatches: the driver's own thread when
nothing of its own is in flight (someone waits for that task: no hop to the
server thread), the server thread when tasks of its are in flight (a loop of
submits: what piles up goes out together, one message per worker). And how
the server thread's drain ends (the router asked, not a receive that fails)."""
from __future__ import annotations

import select
import threading
import time

import pytest
import zmq

import orion
from orion.api import _current_client
from orion.transport import protocol
from orion.transport.zmq_head import HeadServer
from conftest import touch, wait_for_file

pytestmark = pytest.mark.timeout(60)


@orion.remote
def answer():
    return 42


@orion.remote
def blocker(path):
    wait_for_file(path)
    return "released"


@pytest.fixture
def sends():
    """Names of the threads that sent dispatches the head buffered."""
    orion.init(num_workers=2)
    server = _current_client().server
    send_pending = server._send_pending
    seen = []

    def recording():
        if any("dispatch" in kinds for kinds in server.transport.batches.values()):
            seen.append(threading.current_thread().name)
        return send_pending()

    server._send_pending = recording
    try:
        orion.get(answer.remote(), timeout=30)  # a worker has started
        yield seen
    finally:
        server._send_pending = send_pending
        orion.shutdown()


def test_a_lone_task_is_sent_from_the_drivers_thread(sends):
    sends.clear()
    assert orion.get(answer.remote(), timeout=30) == 42
    assert sends == [threading.current_thread().name]


def test_a_task_submitted_behind_one_in_flight_is_sent_by_the_server_thread(sends, tmp_path):
    sends.clear()
    release = str(tmp_path / "release")
    first = blocker.remote(release)
    assert sends == [threading.current_thread().name]  # (nothing was in flight)
    sends.clear()
    second = answer.remote()
    # The other worker is idle: the server thread sends it without waiting
    # for anything else to happen.
    assert orion.get(second, timeout=30) == 42
    assert sends and threading.current_thread().name not in sends
    touch(release)
    assert orion.get(first, timeout=30) == "released"



def test_a_drain_that_ends_on_an_empty_router_leaves_its_descriptor_armed():
    """The head thread's drain ends by asking the router whether more waits
    (after the first message) and, when the answer is no and nothing was sent
    since, blocks on the socket's descriptor without asking again: a message
    that comes later must still wake that descriptor."""
    server = HeadServer("127.0.0.1", 0)  # not started: this thread plays the head thread
    context = zmq.Context()
    client = context.socket(zmq.DEALER)
    client.setsockopt(zmq.IDENTITY, b"c:drain-test")
    client.connect(server.address)
    descriptor = select.poll()
    descriptor.register(server.router.get(zmq.FD), select.POLLIN)
    ask = protocol.encode("nodes", [1])

    def wait_for_a_message():
        deadline = time.monotonic() + 10
        while server.router.get(zmq.EVENTS) & zmq.POLLIN == 0:  # (a test may ask; the head does not spin)
            assert time.monotonic() < deadline, "the request never reached the head"
            descriptor.poll(100)

    try:
        with server.lock:
            client.send_multipart(ask)
            wait_for_a_message()
            assert server._drain() is True  # one message, then the router said: nothing more
            client.send_multipart(ask)  # arrives after that answer
            assert descriptor.poll(5000), "the router's descriptor did not wake for a later message"
            assert server._readable()
            assert server._drain() is True
            assert server._drain() is False  # nothing at all: a receive found nothing, it cannot tell
    finally:
        client.close(linger=0)
        context.term()
        server.start()
        server.stop()


@pytest.fixture
def head_submits():
    """The batches the embedded head is handed (``Head.submit`` calls)."""
    orion.init(num_workers=2)
    client = _current_client()
    head = client.server.head
    submit = head.submit
    batches = []

    def recording(specs):
        batches.append(len(specs))
        return submit(specs)

    head.submit = recording
    try:
        yield client, batches
    finally:
        head.submit = submit
        orion.shutdown()


def test_submits_behind_one_in_flight_reach_the_head_together(head_submits, tmp_path):
    """With a task of its in flight, the driver takes no lock per submit: the
    server thread hands the head all that piled up in one call."""
    client, batches = head_submits
    release = str(tmp_path / "release")
    first = blocker.remote(release)
    assert batches == [1]  # nothing was in flight: submitted at once
    with client.server.lock:  # the server thread cannot take them meanwhile
        refs = [answer.remote() for _ in range(50)]  # (would block here if a submit took the lock)
        assert batches == [1]
    assert orion.get(refs, timeout=30) == [42] * 50
    assert batches == [1, 50]
    touch(release)
    assert orion.get(first, timeout=30) == "released"


def test_calls_after_deferred_submits_reach_the_head_after_them(head_submits, tmp_path):
    """A cancel (or any call) that follows submits still waiting for the server
    thread finds the head told of them first, whichever thread takes the lock."""
    client, batches = head_submits
    release = str(tmp_path / "release")
    first = blocker.remote(release)
    server = client.server
    server.lock.acquire()
    try:
        queued = blocker.remote(release)  # deferred: the lock is held
        cancelling = threading.Thread(target=orion.cancel, args=(queued,))
        cancelling.start()  # waits for the lock, as the server thread does
    finally:
        server.lock.release()
    cancelling.join(30)
    assert not cancelling.is_alive()
    with pytest.raises(orion.TaskCancelledError):
        orion.get(queued, timeout=30)
    touch(release)
    assert orion.get(first, timeout=30) == "released"
    assert batches == [1, 1]
