"""The worker's side of recall (``Worker.recall``, run by its stdin thread while
the main thread may be running a task): what it gives back, what it keeps,
and what it answers on its reply pipe. Driven on a bare stand-in for the
worker's state, without processes (``test_recall.py`` runs it end to end)."""
from __future__ import annotations

import collections
import os
import threading
import types

import pytest

from orion.transport.zmq_worker import Worker

pytestmark = pytest.mark.timeout(10)


def dispatch(task_id):
    return (task_id, "name", "function id", None)  # (only the id matters here)


@pytest.fixture
def worker():
    read_end, write_end = os.pipe()
    state = types.SimpleNamespace(
        _reply_fd=write_end, _cancel_lock=threading.Lock(), _queue=collections.deque(), _levels=[],
        _handled=collections.deque(maxlen=100), _suspended=[], _task_id=None, _recalled=set())
    state.answers = lambda: os.read(read_end, 65536).decode().splitlines()
    yield state
    os.close(read_end)
    os.close(write_end)


def test_gives_back_what_is_queued_and_not_started(worker):
    worker._task_id = "long"
    worker._queue.extend([dispatch("a"), dispatch("b")])
    Worker.recall(worker, ["a", "b"])
    assert not worker._queue
    assert worker.answers() == ["recalled a b"]


def test_keeps_a_task_taken_off_the_queue_to_start(worker):
    """The main thread took ``a`` to run it (and will): it is not given back,
    although it is neither queued nor the current task yet."""
    worker._queue.extend([dispatch("a"), dispatch("b")])
    assert Worker._next_queued(worker)[0] == "a"
    Worker.recall(worker, ["a", "b"])
    assert worker.answers() == ["recalled b"]
    assert Worker._next_queued(worker) is None


def test_keeps_the_running_task_and_those_it_sent_back_or_runs_inside_a_get(worker):
    worker._task_id = "running"
    worker._handled.append("sent-back")
    worker._levels.append(collections.deque([dispatch("helped")]))
    worker._suspended.append("suspended")
    worker._queue.append(dispatch("queued"))
    Worker.recall(worker, ["running", "sent-back", "helped", "suspended", "queued"])
    assert worker.answers() == ["recalled queued"]


def test_a_task_still_on_its_way_is_dropped_when_it_comes(worker):
    Worker.recall(worker, ["later"])
    assert worker.answers() == ["recalled later"]
    assert Worker._given_back_before(worker, "later") is True
    assert Worker._given_back_before(worker, "later") is False  # (once)


def test_without_a_reply_pipe_it_keeps_everything(worker):
    worker._reply_fd = None
    worker._queue.append(dispatch("a"))
    Worker.recall(worker, ["a", "b"])
    assert [d[0] for d in worker._queue] == ["a"] and not worker._recalled
