"""The node's large-object store: file format, zero-copy reads, spilling, cleanup."""
from __future__ import annotations

import concurrent.futures
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from orion import serialization
from orion.store import NodeStore, default_memory_limit, parse_size
from orion.store.node_store import default_shm_root
from orion.store.shm_format import ALIGNMENT, object_size, read_object, write_object

REPO = Path(__file__).resolve().parent.parent
MB = 1 << 20


@pytest.fixture
def store(tmp_path):
    s = NodeStore("node-1", memory_limit=64 * MB, shm_root=str(tmp_path / "shm"), spill_dir=str(tmp_path / "spill"))
    yield s
    s.close()


def make_store(tmp_path, limit):
    return NodeStore("node:1", memory_limit=limit, shm_root=str(tmp_path / "shm"), spill_dir=str(tmp_path / "spill"))


def roundtrip(store, object_id, value):
    store.write(object_id, *serialization.dumps(value))
    return serialization.loads(*store.open(object_id))


def data_address(array):
    return array.__array_interface__["data"][0]


def test_bytes_and_plain_values_round_trip(store):
    blob = os.urandom(300_000)
    assert roundtrip(store, "a1", blob) == blob
    assert roundtrip(store, "a2", {"x": [1, 2, 3], "y": "z"}) == {"x": [1, 2, 3], "y": "z"}
    assert "a1" in store and "a2" in store and "a3" not in store


def test_numpy_array_is_zero_copy_and_read_only(store):
    array = np.arange(1_000_000, dtype=np.float64)
    header, buffers = serialization.dumps(array)
    assert len(buffers) == 1
    store.write("0abc", header, buffers)
    header, views = store.open("0abc")
    assert all(isinstance(v, memoryview) and v.readonly for v in views)
    back = pickle.loads(header, buffers=views)
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable is False
    # Same memory as the mapped file's buffer: nothing was copied.
    mapped = np.frombuffer(views[0], dtype=np.uint8)
    assert data_address(back) == data_address(mapped)
    assert data_address(back) % ALIGNMENT == 0
    with pytest.raises(ValueError):
        back[0] = 1.0


def test_200_mb_array_round_trip(store):
    array = np.arange(25 * MB, dtype=np.int64)  # 200 MB
    back = roundtrip(store, "big", array)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)
    assert not back.flags.writeable
    # 200 MB is over this store's 64 MB limit: it went straight to disk.
    assert store.stats()["spilled_objects"] == 1 and store.stats()["used"] == 0


def test_fortran_and_structured_arrays(store):
    fortran = np.asfortranarray(np.arange(200_000, dtype=np.int32).reshape(400, 500))
    back = roundtrip(store, "f", fortran)
    assert np.array_equal(back, fortran) and back.flags.f_contiguous
    records = np.zeros(50_000, dtype=[("a", ">i4"), ("b", "<f8")])
    records["a"] = np.arange(50_000)
    assert np.array_equal(roundtrip(store, "r", records), records)


def test_zero_buffers_and_empty_buffers(tmp_path):
    path = str(tmp_path / "obj")
    size = write_object(path, b"hdr", [])
    assert size == os.path.getsize(path) == object_size(b"hdr", [])
    assert read_object(path) == (b"hdr", [])

    size = write_object(path, b"", [b"", memoryview(b""), b"abc", bytearray()])
    assert size == os.path.getsize(path)
    header, views = read_object(path)
    assert header == b"" and [bytes(v) for v in views] == [b"", b"", b"abc", b""]


def test_buffers_are_64_byte_aligned(tmp_path):
    path = str(tmp_path / "obj")
    buffers = [os.urandom(n) for n in (1, 63, 64, 65, 1000, 0, 7)]
    write_object(path, b"h" * 13, buffers)
    header, views = read_object(path)
    assert header == b"h" * 13
    assert [bytes(v) for v in views] == buffers
    for view in views:
        if view.nbytes:
            assert data_address(np.frombuffer(view, dtype=np.uint8)) % ALIGNMENT == 0


def test_write_is_atomic_and_leaves_no_temp_files(store, tmp_path):
    for i in range(5):
        store.write(f"obj{i}", *serialization.dumps(np.ones(50_000)))
    assert sorted(os.listdir(store.shm_dir)) == [f"obj{i}" for i in range(5)]
    # A failed write leaves neither the object nor its temp file.
    path = str(tmp_path / "failed")
    with pytest.raises(BufferError):
        write_object(path, b"h", [np.ones((10, 10))[:, ::2]])  # not contiguous
    assert not any(name.startswith("failed") for name in os.listdir(tmp_path))


def test_corrupt_and_missing_objects(store, tmp_path):
    for junk in (b"", b"ORO1", b"XXXX" + bytes(100)):
        Path(store.shm_dir, "bad").write_bytes(junk)
        with pytest.raises(ValueError, match="corrupt"):
            store.open("bad")
    # A truncated file: the recorded size no longer matches.
    path = str(tmp_path / "trunc")
    write_object(path, b"header", [os.urandom(1000)])
    os.truncate(path, 500)
    with pytest.raises(ValueError, match="corrupt"):
        read_object(path)
    with pytest.raises(FileNotFoundError):
        read_object(str(tmp_path / "nothing"))
    with pytest.raises(KeyError):
        store.open("nothing")


def test_spilling_keeps_memory_within_limit(tmp_path):
    store = make_store(tmp_path, 1 * MB)
    try:
        arrays = {f"o{i}": np.full(300_000, i, dtype=np.uint8) for i in range(10)}  # 3 MB in all
        for object_id, array in arrays.items():
            store.write(object_id, *serialization.dumps(array))
            assert store.stats()["used"] <= MB
        stats = store.stats()
        assert stats["limit"] == MB and stats["spilled_objects"] >= 7 and stats["spilled"] > 0
        assert stats["objects"] + stats["spilled_objects"] == 10
        assert sum(os.path.getsize(Path(store.shm_dir, n)) for n in os.listdir(store.shm_dir)) == stats["used"]
        # The oldest went to disk first; the newest stayed in memory.
        assert NodeStore.locate(store.shm_dir, store.spill_dir, "o0") == os.path.join(store.spill_dir, "o0")
        assert NodeStore.locate(store.shm_dir, store.spill_dir, "o9") == os.path.join(store.shm_dir, "o9")
        for object_id, array in arrays.items():
            assert np.array_equal(serialization.loads(*store.open(object_id)), array)
        assert not [n for n in os.listdir(store.spill_dir) if ".tmp-" in n]
    finally:
        store.close()


def test_lru_order_follows_reads(tmp_path):
    store = make_store(tmp_path, 1 * MB)
    try:
        for object_id in ("a", "b"):
            store.write(object_id, *serialization.dumps(np.zeros(400_000, dtype=np.uint8)))
        store.open("a")  # now "b" is the least recently used
        store.write("c", *serialization.dumps(np.zeros(400_000, dtype=np.uint8)))
        assert sorted(os.listdir(store.shm_dir)) == ["a", "c"]
        assert os.listdir(store.spill_dir) == ["b"]
    finally:
        store.close()


def test_object_over_the_limit_goes_straight_to_disk(tmp_path):
    store = make_store(tmp_path, 1 * MB)
    try:
        store.write("small", *serialization.dumps(np.zeros(100_000, dtype=np.uint8)))
        header, buffers = serialization.dumps(np.zeros(2 * MB, dtype=np.uint8))
        path = store.path_for_new("huge", object_size(header, buffers))
        assert path == os.path.join(store.spill_dir, "huge")
        store.write("huge", header, buffers)
        assert os.listdir(store.shm_dir) == ["small"]  # the small one was not pushed out
        stats = store.stats()
        assert stats["objects"] == 1 and stats["spilled_objects"] == 1 and stats["spilled"] > 2 * MB
        assert serialization.loads(*store.open("huge")).sum() == 0
    finally:
        store.close()


def test_object_sealed_in_memory_alone_over_the_limit_is_spilled(tmp_path):
    store = make_store(tmp_path, 1 * MB)
    try:
        path = os.path.join(store.shm_dir, "x")  # a writer that ignored path_for_new
        size = write_object(path, *serialization.dumps(np.zeros(2 * MB, dtype=np.uint8)))
        store.sealed("x", size, path)
        assert store.stats()["used"] == 0 and os.listdir(store.spill_dir) == ["x"]
    finally:
        store.close()


def test_sealed_is_idempotent(store):
    header, buffers = serialization.dumps(np.ones(100_000))
    path = store.path_for_new("s1", object_size(header, buffers))
    size = write_object(path, header, buffers)
    store.sealed("s1", size, path)
    store.sealed("s1", size, path)
    store.sealed("s1", size)
    assert store.stats()["used"] == size and store.stats()["objects"] == 1
    assert store.write("s1", header, buffers) == size  # already stored: no second copy
    assert store.stats()["used"] == size
    with pytest.raises(FileNotFoundError):
        store.sealed("never-written", 10)


def test_free_removes_files(tmp_path):
    store = make_store(tmp_path, 1 * MB)
    try:
        for i in range(4):
            store.write(f"f{i}", *serialization.dumps(np.zeros(400_000, dtype=np.uint8)))
        assert store.stats()["spilled_objects"] > 0
        store.free([f"f{i}" for i in range(4)] + ["unknown"])
        assert os.listdir(store.shm_dir) == [] and os.listdir(store.spill_dir) == []
        assert store.stats() == {"used": 0, "spilled": 0, "limit": MB, "objects": 0, "spilled_objects": 0,
                                 "recycled": 0, "recycled_files": 0}  # 400 KB: too small to recycle
        assert "f0" not in store
        with pytest.raises(KeyError):
            store.open("f0")
    finally:
        store.close()


def test_locate_from_another_process_view(store):
    store.write("loc", *serialization.dumps(np.ones(10)))
    shm_dir, spill_dir = store.shm_dir, store.spill_dir  # all another process knows
    assert NodeStore.locate(shm_dir, spill_dir, "loc") == os.path.join(shm_dir, "loc")
    assert NodeStore.locate(shm_dir, spill_dir, "other") is None
    store.free(["loc"])
    assert NodeStore.locate(shm_dir, spill_dir, "loc") is None


def test_mapped_reader_survives_free_and_spill(tmp_path):
    store = make_store(tmp_path, 1 * MB)
    try:
        expected = np.arange(100_000, dtype=np.int64)  # 800 KB
        store.write("keep", *serialization.dumps(expected))
        held = serialization.loads(*store.open("keep"))
        store.write("push", *serialization.dumps(np.zeros(800_000, dtype=np.uint8)))  # spills "keep"
        assert os.listdir(store.spill_dir) == ["keep"]
        assert np.array_equal(held, expected)
        store.free(["keep", "push"])
        assert np.array_equal(held, expected)
    finally:
        store.close()
    assert np.array_equal(held, expected)  # even with the directories gone


@pytest.mark.parametrize("bad", ["../x", "", "a/b", "/etc/passwd", ".", "..", "a.b", "x" * 129, "a\n", None, 5])
def test_bad_ids_are_rejected(store, bad):
    for call in (lambda: store.open(bad), lambda: store.write(bad, b"h", []), lambda: store.free([bad]),
                 lambda: store.path_for_new(bad, 10), lambda: store.sealed(bad, 10),
                 lambda: bad in store, lambda: NodeStore.locate(store.shm_dir, store.spill_dir, bad)):
        with pytest.raises(ValueError, match="invalid object id"):
            call()
    store.write("Ok_id-" + "9" * 122, b"h", [])  # 128 characters is fine


def test_directories_are_named_and_removed(tmp_path):
    store = NodeStore("node/1 x", memory_limit=MB, shm_root=str(tmp_path))
    try:
        assert store.shm_dir == str(tmp_path / f"orion-node_1_x-{os.getpid()}")
        assert os.path.basename(store.spill_dir) == f"orion-spill-node_1_x-{os.getpid()}"
        store.write("z", *serialization.dumps(np.zeros(2 * MB, dtype=np.uint8)))  # creates the spill dir
        assert os.path.isdir(store.shm_dir) and os.path.isdir(store.spill_dir)
    finally:
        store.close()
        store.close()
    assert not os.path.exists(store.shm_dir) and not os.path.exists(store.spill_dir)
    with pytest.raises(RuntimeError):
        store.open("z")


def test_cleanup_stale_removes_only_dead_owners(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    shm_root, spill_root = tmp_path / "shm", tmp_path / "tmp"
    dead = [shm_root / f"orion-node_1-{child.pid}", spill_root / f"orion-spill-node_1-{child.pid}"]
    alive = [shm_root / f"orion-node_1-{os.getpid()}", spill_root / f"orion-spill-node_1-{os.getpid()}",
             shm_root / f"orion-node-{os.getppid()}"]
    other = [shm_root / "unrelated", spill_root / f"orion-notes-{child.pid}.txt"]
    for directory in dead + alive + other[:1]:
        directory.mkdir(parents=True)
        (directory / "obj").write_bytes(b"x")
    other[1].write_text("a file, not a store")
    removed = NodeStore.cleanup_stale(shm_root=str(shm_root), spill_root=str(spill_root))
    assert sorted(removed) == sorted(str(d) for d in dead)
    assert not any(d.exists() for d in dead)
    assert all(p.exists() for p in alive + other)


def test_parse_size():
    assert parse_size("500000") == 500_000
    assert parse_size("100MB") == 100_000_000
    assert parse_size("2GiB") == 2 << 30
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("64 kib") == 64 << 10
    assert parse_size("10b") == 10
    assert parse_size(" 3 TB ") == 3 * 10 ** 12
    assert parse_size(123) == 123
    assert parse_size("123456789012345678901") == 123456789012345678901
    for bad in ("", "MB", "-1", "1.5X", "1e9", "ten", "1,000", None, -5, True):
        with pytest.raises(ValueError, match="invalid size"):
            parse_size(bad)


def test_default_memory_limit(monkeypatch):
    monkeypatch.delenv("ORION_OBJECT_STORE_MEMORY", raising=False)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert abs(default_memory_limit() - physical * 0.3) <= 1
    monkeypatch.setenv("ORION_OBJECT_STORE_MEMORY", "123456")
    assert default_memory_limit() == 123456
    monkeypatch.setenv("ORION_OBJECT_STORE_MEMORY", "lots")
    with pytest.raises(ValueError, match="ORION_OBJECT_STORE_MEMORY"):
        default_memory_limit()


def test_memory_limit_accepts_sizes(tmp_path):
    store = NodeStore("n", memory_limit="2MiB", shm_root=str(tmp_path))
    try:
        assert store.memory_limit == 2 * MB and store.stats()["limit"] == 2 * MB
    finally:
        store.close()


def test_writer_in_another_process(tmp_path):
    store = make_store(tmp_path, 64 * MB)
    try:
        expected = np.arange(1_000_000, dtype=np.int64)
        header, buffers = serialization.dumps(expected)
        path = store.path_for_new("3fa2b1c4d5e6000000010001", object_size(header, buffers))
        script = textwrap.dedent(f"""
            import sys
            import numpy as np
            from orion import serialization
            from orion.store.shm_format import write_object
            size = write_object({path!r}, *serialization.dumps(np.arange(1_000_000, dtype=np.int64)))
            print(size)
        """)
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=50)
        assert done.returncode == 0, done.stderr
        size = int(done.stdout)
        store.sealed("3fa2b1c4d5e6000000010001", size, path)
        assert store.stats()["used"] == size
        back = serialization.loads(*store.open("3fa2b1c4d5e6000000010001"))
        assert np.array_equal(back, expected) and not back.flags.writeable
    finally:
        store.close()


def test_default_directories(monkeypatch):
    monkeypatch.delenv("ORION_OBJECT_STORE_MEMORY", raising=False)
    store = NodeStore("defaults", memory_limit=MB)
    try:
        assert os.path.dirname(store.shm_dir) == default_shm_root()
        assert os.path.dirname(store.spill_dir) == tempfile.gettempdir()
        assert roundtrip(store, "d", b"y" * 200_000) == b"y" * 200_000
    finally:
        store.close()
    assert not os.path.exists(store.shm_dir)


def test_threads_share_one_store(tmp_path):
    store = make_store(tmp_path, 2 * MB)
    try:
        def work(t):
            for i in range(20):
                object_id = f"t{t}_{i}"
                value = np.full(100_000, t * 100 + i, dtype=np.int32)
                store.write(object_id, *serialization.dumps(value))
                assert np.array_equal(serialization.loads(*store.open(object_id)), value)
                if i % 2:
                    store.free([object_id])

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(4)))
        stats = store.stats()
        assert stats["used"] <= 2 * MB and stats["objects"] + stats["spilled_objects"] == 40
        on_disk = os.listdir(store.shm_dir) + os.listdir(store.spill_dir)
        assert sorted(on_disk) == sorted(f"t{t}_{i}" for t in range(4) for i in range(0, 20, 2))
        assert stats["used"] == sum(os.path.getsize(Path(store.shm_dir, n)) for n in os.listdir(store.shm_dir))
        assert stats["spilled"] == sum(os.path.getsize(Path(store.spill_dir, n)) for n in os.listdir(store.spill_dir))
    finally:
        store.close()


def test_small_objects_are_read_as_an_aligned_private_copy(tmp_path):
    """At most COPY_MAX bytes: read with one copy, not mapped (no mapping to
    keep per value: a driver holding many such values holds no memory maps)."""
    from orion.store.shm_format import COPY_MAX

    path = str(tmp_path / "small")
    write_object(path, b"h", [os.urandom(1000)])
    assert os.path.getsize(path) <= COPY_MAX
    header, views = read_object(path)
    os.unlink(path)
    assert views[0].readonly
    assert data_address(np.frombuffer(views[0], dtype=np.uint8)) % ALIGNMENT == 0
    maps = open("/proc/self/maps").read()
    assert path not in maps


def test_a_bytes_value_is_read_straight_into_the_bytes_returned(tmp_path):
    """A small file holding one bytes value (out of band): its buffer is read
    into a bytes object of its own, which loads returns as it is (one copy)."""
    from orion.store.shm_format import COPY_MAX

    blob = os.urandom(100 * 1024)
    path = str(tmp_path / "blob")
    write_object(path, *serialization.dumps(blob))
    assert os.path.getsize(path) <= COPY_MAX
    header, buffers = read_object(path)
    assert type(buffers[0]) is bytes
    assert serialization.loads(header, buffers) is buffers[0]
    assert buffers[0] == blob


def test_a_truncated_bytes_value_is_reported_corrupt(tmp_path):
    path = str(tmp_path / "blob")
    write_object(path, *serialization.dumps(os.urandom(100 * 1024)))
    os.truncate(path, os.path.getsize(path) - 1)
    with pytest.raises(ValueError, match="corrupt"):
        read_object(path)
