"""Who sends an embedded driver's dispatches: the driver's own thread when
nothing of its own is in flight (someone waits for that task: no hop to the
server thread), the server thread when tasks of its are in flight (a loop of
submits: what piles up goes out together, one message per worker)."""
from __future__ import annotations

import threading

import pytest

import orion
from orion.api import _current_client
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
