"""send_frames / recv_frames: the same messages as pyzmq's send_multipart and
recv_multipart(copy=False), in both directions and mixed with them."""
from __future__ import annotations

import pytest
import zmq

from orion.transport.frames import recv_frames, send_frames

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair():
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.bind("inproc://frames-test")
    b.connect("inproc://frames-test")
    yield a, b
    a.close(linger=0)
    b.close(linger=0)
    context.term()


def test_messages_keep_their_frames_whichever_side_uses_which(pair):
    a, b = pair
    big = bytes(range(256)) * 1024  # over pyzmq's copy threshold: sent without a copy
    messages = [[b"one"], [b"envelope", b"", memoryview(big), bytearray(b"tail")]]
    for message in messages:
        send_frames(a, message)
        assert [bytes(f.buffer) for f in recv_frames(b)] == [bytes(part) for part in message]
        a.send_multipart(message)
        assert [bytes(f.buffer) for f in recv_frames(b)] == [bytes(part) for part in message]
        send_frames(a, message)
        assert [bytes(part) for part in b.recv_multipart()] == [bytes(part) for part in message]


def test_recv_frames_without_a_message_raises_again_with_noblock(pair):
    _, b = pair
    with pytest.raises(zmq.Again):
        recv_frames(b, zmq.NOBLOCK)


def test_send_frames_with_noblock_on_a_full_socket_raises_again():
    context = zmq.Context()
    lonely = context.socket(zmq.DEALER)  # connected to nobody: nowhere to queue
    try:
        with pytest.raises(zmq.Again):
            send_frames(lonely, [b"a", b"b"], zmq.NOBLOCK)
    finally:
        lonely.close(linger=0)
        context.term()
