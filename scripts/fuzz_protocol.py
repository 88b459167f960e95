"""Coverage-guided fuzzing of the wire decoders with atheris (long runs).

    pip install atheris
    python scripts/fuzz_protocol.py -max_total_time=600

The property: whatever bytes arrive, ``protocol.decode`` and the ``wire``
record decoders raise nothing but ``ProtocolError``. (The test suite checks
the same property with Hypothesis on every run: tests/test_protocol.py.)
"""
import sys

import atheris

with atheris.instrument_imports():
    import msgpack

    from orion.transport import protocol, wire
    from orion.transport.protocol import ProtocolError


def fuzz_one(data):
    provider = atheris.FuzzedDataProvider(data)
    frame_count = provider.ConsumeIntInRange(0, 4)
    frames = [provider.ConsumeBytes(provider.ConsumeIntInRange(0, 256)) for _ in range(frame_count)]
    try:
        msg_type, body, buffers = protocol.decode(frames)
        if msg_type == "submit":
            cursor = protocol.BufferCursor(buffers)
            for record in body[1]:
                wire.decode_submit_record(record, cursor, "c:fuzz")
        elif msg_type == "dispatch":
            for record in body[0]:
                wire.decode_dispatch(record, buffers)
        elif msg_type == "objects":
            wire.decode_entries(body[0], buffers)
        elif msg_type == "done":
            wire.decode_done(body[0], buffers)
        elif msg_type == "failed":
            wire.decode_failure(body[1])
        elif msg_type == "release":
            wire.decode_contained(body[3])
    except ProtocolError:
        pass
    # Also feed arbitrary msgpack structures through the record decoders.
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return
    for decoder in (lambda v: wire.decode_failure(v), lambda v: wire.decode_entries(v, []),
                    lambda v: wire.decode_results(v, []), lambda v: wire.decode_done(v, []),
                    lambda v: wire.decode_dispatch(v, []),
                    lambda v: wire.decode_submit_record(v, protocol.BufferCursor([]), "c:fuzz")):
        try:
            decoder(value)
        except ProtocolError:
            pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, fuzz_one)
    atheris.Fuzz()
