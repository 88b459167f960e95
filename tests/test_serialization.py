"""Unit tests of orion.serialization: which values go out of band, and that
they come back equal (and, for bytes, without a copy)."""
from __future__ import annotations

import pickle

import pytest

from orion import serialization
from orion.serialization import BYTES_OUT_OF_BAND_MIN, dumps, loads


def test_large_bytes_go_out_of_band_as_they_are():
    blob = bytes(range(256)) * (BYTES_OUT_OF_BAND_MIN // 256 + 1)
    header, buffers = dumps(blob)
    assert buffers == [blob] and buffers[0] is blob  # no copy into the header
    assert len(header) < 64
    assert loads(header, buffers) is blob  # a bytes buffer is the value itself


@pytest.mark.parametrize("wrap", [memoryview, bytearray, lambda b: memoryview(b).toreadonly()])
def test_large_bytes_come_back_as_bytes_from_any_buffer(wrap):
    blob = b"x" * BYTES_OUT_OF_BAND_MIN
    header, buffers = dumps(blob)
    back = loads(header, [wrap(buffers[0])])
    assert type(back) is bytes and back == blob


def test_small_bytes_and_bytes_subclasses_stay_in_band():
    small = b"y" * (BYTES_OUT_OF_BAND_MIN - 1)
    assert dumps(small) == (pickle.dumps(small, protocol=5), [])

    class Tagged(bytes):
        pass

    header, buffers = dumps(Tagged(b"z" * BYTES_OUT_OF_BAND_MIN))
    back = loads(header, buffers)
    assert type(back) is Tagged and back == b"z" * BYTES_OUT_OF_BAND_MIN


def test_the_bytes_header_names_no_orion_module():
    # Anything that unpickles it needs builtins only (no import of Orion).
    assert b"orion" not in serialization.BYTES_HEADER
