"""The worker process's message handling, driven directly over a real socket."""
from __future__ import annotations

import pytest
import zmq

from orion import serialization
from orion.head import TaskRecord
from orion.scheduler.events import TaskSpec
from orion.transport import protocol, wire
from orion.transport.zmq_worker import Worker


def double(x):
    return 2 * x


def dispatch_frames(task_id, blob, arg):
    header, buffers = serialization.dumps_args((arg,), {}, "double")
    spec = TaskSpec(task_id, (task_id + "0001",), (), {"CPU": 1.0}, 0, "double",
                    TaskRecord("fn-double", (header, buffers), 1, False, "c:test"))
    frames = []
    record = wire.encode_dispatch(spec, None, blob, frames)
    return protocol.encode("dispatch", [[record]], frames)


@pytest.fixture
def head_and_worker():
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = Worker(f"tcp://127.0.0.1:{port}", "n-w1", "n")
    worker.send("hello", ["worker", "n-w1", "n", 0])
    identity, *frames = router.recv_multipart()
    assert protocol.decode(frames)[0] == "hello"
    yield router, identity, worker
    worker.socket.close(0)
    worker.context.term()
    router.close(0)
    context.term()


def next_message(router):
    assert router.poll(5000)
    _, *frames = router.recv_multipart()
    return protocol.decode(frames)


@pytest.mark.timeout(30)
def test_a_function_sent_with_a_rejected_task_is_kept_for_the_next(head_and_worker):
    router, identity, worker = head_and_worker
    blob = serialization.dumps_function(double)
    worker._in_get = True  # its current task waits in get: queued tasks go back
    router.send_multipart([identity, *dispatch_frames("t1", blob, 1)])
    assert worker._receive(5000)
    msg_type, body, _ = next_message(router)
    assert (msg_type, body) == ("rejected", ["t1"])
    worker._in_get = False
    # The head sent the function once already: the next dispatch comes without it.
    router.send_multipart([identity, *dispatch_frames("t2", None, 21)])
    assert worker._receive(5000)
    worker._run_queued()
    msg_type, body, buffers = next_message(router)
    assert msg_type == "done", body
    ((task_id, results, _times),) = body[0]  # one record: the worker's queue ran dry
    assert task_id == "t2"
    (header, nbuf), = results
    assert serialization.loads(header, buffers[:nbuf]) == 42
