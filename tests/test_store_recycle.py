"""Recycling freed shared-memory files: the pool, the readers' pins, racing writers."""
from __future__ import annotations

import fcntl
import gc
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import orion
from orion import serialization
from orion.api import _current_client
from orion.store import NodeStore, node_store, shm_format
from orion.store.access import LocalNode
from orion.store.shm_format import RECYCLE_DIR, RECYCLE_MIN, object_size, read_object, write_object

REPO = Path(__file__).resolve().parent.parent
MB = 1 << 20


def make_store(tmp_path, limit=64 * MB):
    return NodeStore("node-r", memory_limit=limit, shm_root=str(tmp_path / "shm"), spill_dir=str(tmp_path / "spill"))


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path)
    yield s
    s.close()


def filled(fill, nbytes=2 * MB):
    return np.full(nbytes, fill, dtype=np.uint8)


def put(store, object_id, value):
    """Write ``value``; the inode of its file."""
    store.write(object_id, *serialization.dumps(value))
    return inode(store, object_id)


def inode(store, object_id):
    return os.stat(os.path.join(store.shm_dir, object_id)).st_ino


def get(store, object_id):
    return serialization.loads(*store.open(object_id))


def pool_inodes(store):
    return sorted(os.stat(f.path).st_ino for f in shm_format.pool_files(store.pool_dir))


def no_temp_files(*directories):
    return not [n for d in directories if os.path.isdir(d) for n in os.listdir(d) if ".tmp-" in n]


def test_freed_file_is_reused_by_the_next_writer(store):
    first = put(store, "a", filled(1))
    size = store.stats()["used"]
    assert size > 2 * MB
    store.free(["a"])
    assert os.listdir(store.shm_dir) == [RECYCLE_DIR]
    assert [name.split("-")[0] for name in os.listdir(store.pool_dir)] == [str(size)]  # the size, for writers
    stats = store.stats()
    assert stats["recycled"] == size and stats["recycled_files"] == 1 and stats["used"] == 0
    assert "a" not in store
    with pytest.raises(KeyError):
        store.open("a")
    with pytest.raises(ValueError, match="invalid object id"):
        store.open(RECYCLE_DIR)  # the pool is never an object

    assert put(store, "b", filled(2)) == first  # same inode: pages not zeroed again
    assert np.array_equal(get(store, "b"), filled(2))
    assert store.stats()["recycled_files"] == 0 and store.stats()["used"] == size

    # A smaller value (down to half the size) reuses a file too, truncated to its size.
    store.free(["b"])
    assert put(store, "c", filled(3, 3 * MB // 2)) == first
    assert os.path.getsize(os.path.join(store.shm_dir, "c")) == store.stats()["used"] < size
    assert np.array_equal(get(store, "c"), filled(3, 3 * MB // 2))
    # Neither a larger value nor one less than half the size: then a fresh file.
    store.free(["c"])
    third = put(store, "d", filled(4, 3 * MB))
    assert third != first
    store.free(["d"])
    assert put(store, "e", filled(5, 3 * MB // 2)) == first  # both fit: the smaller one
    assert put(store, "f", filled(6, 6 * MB // 5)) != third
    assert pool_inodes(store) == [third]
    assert np.array_equal(get(store, "e"), filled(5, 3 * MB // 2))
    assert np.array_equal(get(store, "f"), filled(6, 6 * MB // 5))
    assert no_temp_files(store.shm_dir, store.pool_dir)


def test_recycled_file_is_byte_for_byte_a_fresh_one(tmp_path):
    # Odd buffer lengths leave alignment gaps, where the old object's bytes would show.
    header, buffers = b"h" * 13, [os.urandom(1_500_000), os.urandom(77), os.urandom(1000)]
    fresh = str(tmp_path / "fresh")
    write_object(fresh, header, buffers)
    pool = tmp_path / RECYCLE_DIR
    pool.mkdir()
    write_object(str(tmp_path / "old"), b"", [b"\xff" * 1_700_000])
    os.rename(tmp_path / "old", pool / shm_format.pool_name(os.path.getsize(tmp_path / "old")))
    recycled = str(tmp_path / "recycled")
    write_object(recycled, header, buffers, recycle_dir=str(pool))
    assert os.listdir(pool) == []  # it was claimed
    assert Path(recycled).read_bytes() == Path(fresh).read_bytes()
    back_header, views = read_object(recycled)
    assert back_header == header and [bytes(v) for v in views] == buffers


def test_mapping_holds_a_shared_flock_until_every_slice_is_gone(tmp_path):
    path = str(tmp_path / "obj")
    write_object(path, *serialization.dumps(filled(9)))
    header, views = read_object(path)
    array = np.frombuffer(views[0], dtype=np.uint8)
    piece = views[0][10:20]
    del header, views
    other = os.open(path, os.O_RDONLY)  # another open file description, as a writer in another process has
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        del array
        gc.collect()
        with pytest.raises(BlockingIOError):  # the slice alone still holds the mapping, and so the lock
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        del piece
        gc.collect()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)


def test_a_reader_of_a_freed_object_keeps_its_bytes(store):
    first = put(store, "a", filled(7))
    held = get(store, "a")
    view = store.open("a")[1][0]
    store.free(["a"])
    assert pool_inodes(store) == [first]  # pooled, but pinned

    assert put(store, "b", filled(8)) != first  # the writer left the pinned file alone
    assert pool_inodes(store) == []             # and took it out of the pool
    assert np.array_equal(get(store, "b"), filled(8))
    assert np.array_equal(held, filled(7)) and bytes(view[:4]) == b"\x07" * 4
    assert bytes(view) == filled(7).tobytes()
    del held, view

    # Once the reader lets go, recycling resumes.
    second = put(store, "c", filled(3))
    held = get(store, "c")
    store.free(["c"])
    assert np.array_equal(held, filled(3))
    del held
    gc.collect()
    assert put(store, "d", filled(4)) == second
    assert np.array_equal(get(store, "d"), filled(4))
    assert no_temp_files(store.shm_dir, store.pool_dir)


def test_an_object_freed_before_its_seal_came_is_recycled_too(store):
    # A worker's seal travels to its node apart from the task's result: the
    # head may free the object first. Its file is complete, so it is pooled;
    # the late seal then finds no file (the node agent ignores that).
    header, buffers = serialization.dumps(filled(3))
    size = shm_format.write_object(os.path.join(store.shm_dir, "early"), header, buffers)
    small_header, small_buffers = serialization.dumps(filled(4, RECYCLE_MIN // 2))
    shm_format.write_object(os.path.join(store.shm_dir, "small"), small_header, small_buffers)
    assert store.recyclable(["early", "small", "never-written"]) == ["early"]  # (the embedded head frees those itself)
    store.free(["early", "small", "never-written"])
    assert os.listdir(store.shm_dir) == [RECYCLE_DIR]
    assert [f.size for f in shm_format.pool_files(store.pool_dir)] == [size]
    assert store.stats()["used"] == 0
    with pytest.raises(FileNotFoundError):
        store.sealed("early", size)
    assert store.stats()["used"] == 0
    put(store, "next", filled(5))
    assert shm_format.pool_files(store.pool_dir) == []  # the next writer took it
    assert np.array_equal(get(store, "next"), filled(5))


def test_small_and_spilled_objects_are_not_recycled(tmp_path):
    store = make_store(tmp_path, 8 * MB)
    try:
        put(store, "small", filled(1, RECYCLE_MIN // 2))
        store.write("huge", *serialization.dumps(filled(2, 9 * MB)))  # over the limit: straight to disk
        assert os.listdir(store.spill_dir) == ["huge"]
        store.free(["small", "huge"])
        assert os.listdir(store.shm_dir) == [] and os.listdir(store.spill_dir) == []
        assert store.stats()["recycled"] == 0 and store.stats()["recycled_files"] == 0
    finally:
        store.close()


def test_pool_cap_in_bytes_and_files(tmp_path, monkeypatch):
    store = make_store(tmp_path, 16 * MB)  # the pool holds at most 4 MiB
    try:
        assert store.pool_limit == 4 * MB
        for name in "abc":
            put(store, name, filled(1, 3 * MB // 2))
        sizes = store.stats()["used"] // 3
        store.free(["a", "b", "c"])
        stats = store.stats()
        assert stats["recycled_files"] == 2 and stats["recycled"] == 2 * sizes <= 4 * MB
        assert os.listdir(store.shm_dir) == [RECYCLE_DIR]  # "c" did not fit: unlinked
    finally:
        store.close()

    monkeypatch.setattr(node_store, "POOL_MAX_FILES", 3)
    store = make_store(tmp_path, 1 << 30)
    try:
        for i in range(5):
            put(store, f"o{i}", filled(i))
        store.free([f"o{i}" for i in range(5)])
        assert store.stats()["recycled_files"] == 3
        assert os.listdir(store.shm_dir) == [RECYCLE_DIR]
    finally:
        store.close()


def test_pool_files_go_before_live_objects_spill(tmp_path):
    store = make_store(tmp_path, 20 * MB)  # pool: at most 5 MiB

    def within_limit():
        stats = store.stats()
        return stats["used"] + stats["recycled"] <= stats["limit"]

    try:
        older, newer = put(store, "x1", filled(1)), put(store, "x2", filled(2))
        store.free(["x1", "x2"])
        assert pool_inodes(store) == sorted([older, newer])
        for i in range(3):
            put(store, f"live{i}", filled(i, 4 * MB))  # too large for the 2 MiB pool files
        assert store.stats()["recycled_files"] == 2 and within_limit()

        # 12 + 5 MiB live and 4 MiB in the pool: the older pool file goes, no live object moves.
        put(store, "live3", filled(3, 5 * MB))
        stats = store.stats()
        assert pool_inodes(store) == [newer] and stats["spilled_objects"] == 0 and stats["objects"] == 4
        assert within_limit()

        # 21 MiB live: the pool empties, and only then the least recently used object spills.
        put(store, "live4", filled(4, 4 * MB))
        stats = store.stats()
        assert stats["recycled_files"] == 0 and stats["spilled_objects"] == 1
        assert os.listdir(store.spill_dir) == ["live0"] and within_limit()
        for i in range(5):
            assert np.array_equal(get(store, f"live{i}"), filled(i, 5 * MB if i == 3 else 4 * MB))
    finally:
        store.close()


def test_two_threads_race_for_one_pool_file(store):
    for round_ in range(20):
        seed = put(store, f"seed{round_}", filled(0))
        store.free([f"seed{round_}"])
        barrier = threading.Barrier(2)
        ids = [f"r{round_}_{t}" for t in range(2)]

        def write(t):
            header, buffers = serialization.dumps(filled(t + 1))
            barrier.wait(timeout=10)
            store.write(ids[t], header, buffers)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        inodes = [inode(store, object_id) for object_id in ids]
        assert inodes.count(seed) == 1  # exactly one claimed it; the other wrote a fresh file
        for t, object_id in enumerate(ids):
            assert np.array_equal(get(store, object_id), filled(t + 1))
        assert pool_inodes(store) == []
        store.free(ids)
        for spare in shm_format.pool_files(store.pool_dir):  # the next round starts with an empty pool
            os.unlink(spare.path)
    assert no_temp_files(store.shm_dir, store.pool_dir)


def test_a_writer_whose_pool_listing_is_stale_writes_a_fresh_file(store, monkeypatch):
    seed = put(store, "seed", filled(0))
    store.free(["seed"])
    stale = shm_format.pool_files(store.pool_dir)
    assert put(store, "first", filled(1)) == seed
    # The second writer listed the pool before the first claimed the file.
    monkeypatch.setattr(shm_format, "pool_files", lambda directory: stale)
    second = put(store, "second", filled(2))
    assert second != seed
    assert np.array_equal(get(store, "first"), filled(1)) and np.array_equal(get(store, "second"), filled(2))
    assert no_temp_files(store.shm_dir, store.pool_dir)


def test_writers_in_several_processes_share_the_pool(tmp_path):
    store = make_store(tmp_path, 256 * MB)
    try:
        for i in range(4):
            put(store, f"seed{i}", filled(0))
        store.free([f"seed{i}" for i in range(4)])
        seeds = pool_inodes(store)
        assert len(seeds) == 4
        script = textwrap.dedent(f"""
            import os, sys
            import numpy as np
            from orion import serialization
            from orion.store.shm_format import recycle_dir, write_object
            worker = int(sys.argv[1])
            values = [serialization.dumps(np.full(2 << 20, worker * 10 + i, dtype=np.uint8)) for i in range(3)]
            print("ready", flush=True)
            sys.stdin.readline()  # all start together
            for i, value in enumerate(values):
                path = os.path.join({store.shm_dir!r}, f"w{{worker}}_{{i}}")
                print(path, write_object(path, *value, recycle_dir=recycle_dir({store.shm_dir!r})), flush=True)
        """)
        children = [subprocess.Popen([sys.executable, "-c", script, str(w)], cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                    for w in range(1, 5)]
        try:
            for child in children:
                assert child.stdout.readline() == "ready\n", child.stderr.read()
            for child in children:
                child.stdin.write("go\n")
                child.stdin.flush()
            outputs = [child.communicate(timeout=50) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        assert all(child.returncode == 0 for child in children), [err for _, err in outputs]
        for out, _ in outputs:
            for line in out.splitlines():
                path, size = line.rsplit(" ", 1)
                store.sealed(os.path.basename(path), int(size), path)
        names = [f"w{w}_{i}" for w in range(1, 5) for i in range(3)]
        for name in names:
            worker, i = int(name[1]), int(name[3])
            assert np.array_equal(get(store, name), filled(worker * 10 + i))
        inodes = [inode(store, name) for name in names]
        # Every pool file was claimed exactly once; the other eight writers wrote fresh files.
        assert len(set(inodes)) == 12 and sorted(set(inodes) & set(seeds)) == seeds
        assert pool_inodes(store) == [] and no_temp_files(store.shm_dir)
    finally:
        store.close()


def test_local_node_writers_recycle_through_the_shm_dir(store):
    local = LocalNode("n", store.shm_dir, store.spill_dir, 3 * MB, store.sealed)  # knows only the directories
    first = put(store, "a", filled(1))
    store.free(["a"])
    local.write("b", *serialization.dumps(filled(2)))
    assert inode(store, "b") == first and np.array_equal(get(store, "b"), filled(2))
    assert store.stats()["objects"] == 1
    # Over the limit: straight to the spill directory, which has no pool.
    store.free(["b"])
    local.write("big", *serialization.dumps(filled(3, 4 * MB)))
    assert os.listdir(store.spill_dir) == ["big"] and pool_inodes(store) == [first]


def test_read_object_of_a_file_recycled_while_opening_it(store, monkeypatch):
    real_flock = fcntl.flock

    def between_open_and_flock(meddle):
        """Run ``meddle`` when the next reader has opened its file but not locked it yet."""
        pending = [meddle]

        def flock(fd, operation):
            if operation & fcntl.LOCK_SH and pending:
                pending.pop()()
            return real_flock(fd, operation)
        monkeypatch.setattr(fcntl, "flock", flock)

    # 1. A writer claimed the freed file and is writing into it: it holds the exclusive lock.
    put(store, "a", filled(1))
    writer = []

    def claim_by_hand():
        store.free(["a"])
        [pooled] = shm_format.pool_files(store.pool_dir)
        tmp = os.path.join(store.shm_dir, "claimed")
        os.rename(pooled.path, tmp)
        writer.append(os.open(tmp, os.O_RDWR))
        real_flock(writer[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
    between_open_and_flock(claim_by_hand)
    with pytest.raises(FileNotFoundError):
        read_object(os.path.join(store.shm_dir, "a"))
    os.close(writer[0])
    os.unlink(os.path.join(store.shm_dir, "claimed"))

    # 2. The writer is done: the file holds another object, under another name.
    first = put(store, "b", filled(2))
    between_open_and_flock(lambda: (store.free(["b"]), put(store, "other", filled(3))))
    with pytest.raises(KeyError):  # read_object raised FileNotFoundError, open_object found nothing else
        store.open("b")
    assert inode(store, "other") == first

    # 3. As 2, and meanwhile the id was written again, into another file: the path names
    #    that file now, not the one the reader opened (which holds "other2").
    first = put(store, "c", filled(4))
    between_open_and_flock(lambda: (store.free(["c"]), put(store, "other2", filled(5)),
                                    write_object(os.path.join(store.shm_dir, "c"), *serialization.dumps(filled(4)))))
    with pytest.raises(FileNotFoundError):
        read_object(os.path.join(store.shm_dir, "c"))
    assert inode(store, "other2") == first
    assert np.array_equal(get(store, "c"), filled(4))  # the new file reads fine
    gc.collect()


def test_failed_write_into_a_claimed_file_leaves_nothing(store, monkeypatch):
    put(store, "a", filled(1))
    store.free(["a"])

    def fail(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(shm_format.ObjectWriter, "_put", fail)  # (pwrite and mapping copies alike)
    with pytest.raises(OSError, match="No space"):
        store.write("b", *serialization.dumps(filled(2)))
    assert os.listdir(store.shm_dir) == [RECYCLE_DIR] and os.listdir(store.pool_dir) == []
    assert "b" not in store


def test_close_removes_the_pool(tmp_path):
    store = make_store(tmp_path)
    put(store, "a", filled(1))
    store.free(["a"])
    assert store.stats()["recycled_files"] == 1
    store.close()
    assert not os.path.exists(store.shm_dir)


def test_object_size_matches_the_recycled_write(store):
    header, buffers = serialization.dumps(filled(6, 3 * MB))
    put(store, "a", filled(1, 4 * MB))
    store.free(["a"])
    store.write("b", header, buffers)
    assert os.path.getsize(os.path.join(store.shm_dir, "b")) == object_size(header, buffers)


# ------------------------------------------------------------ the mapping cache
from orion.store import mappings  # noqa: E402


def cached_mapping(store, object_id):
    """The mapping the cache keeps for the object's file (None if none)."""
    st = os.stat(os.path.join(store.shm_dir, object_id))
    entry = mappings.CACHE._entries.get((st.st_dev, st.st_ino))
    return None if entry is None else entry.mm


def test_a_recycled_file_is_read_through_the_mapping_this_process_kept(store):
    put(store, "a", filled(1))
    assert get(store, "a")[0] == 1  # read, then dropped: its mapping is leased, then idle
    mapped = id(cached_mapping(store, "a"))  # (an id: a reference would keep it leased)
    assert cached_mapping(store, "a") is not None
    store.free(["a"])
    put(store, "b", filled(2))  # into the same file (the writer ended the idle lease first)
    assert id(cached_mapping(store, "b")) == mapped
    value = get(store, "b")
    assert np.array_equal(value, filled(2))  # the new contents, through the old mapping
    assert mappings.CACHE.stats()["leased"] >= 1
    del value
    gc.collect()
    mappings.release_idle()
    assert mappings.CACHE._entries[(os.stat(os.path.join(store.shm_dir, "b")).st_dev,
                                    inode(store, "b"))].lock_fd is None  # idle: unpinned


def test_a_leased_mapping_pins_its_file_and_an_idle_one_does_not(store):
    put(store, "a", filled(1))
    held = get(store, "a")
    path = os.path.join(store.shm_dir, "a")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a writer does before recycling
        del held
        gc.collect()
        mappings.release_idle()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no reader pins it any more
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def test_a_file_recycled_for_another_size_is_mapped_afresh(store):
    put(store, "a", filled(1, 3 * MB))
    get(store, "a")
    gc.collect()
    store.free(["a"])
    put(store, "b", filled(2, 2 * MB))  # a 3 MB file fits a 2 MB object: it shrinks
    assert np.array_equal(get(store, "b"), filled(2, 2 * MB))


def test_idle_mappings_of_unlinked_files_are_dropped(store):
    put(store, "a", filled(1))
    get(store, "a")
    gc.collect()
    mappings.release_idle()
    key = (os.stat(os.path.join(store.shm_dir, "a")).st_dev, inode(store, "a"))
    assert key in mappings.CACHE._entries
    os.unlink(os.path.join(store.shm_dir, "a"))  # spilled or given back: its memory must go
    mappings.release_idle()
    assert key not in mappings.CACHE._entries


def test_idle_mappings_are_bounded(store, monkeypatch):
    monkeypatch.setattr(mappings, "MAX_IDLE", 2)
    for i in range(5):
        put(store, f"o{i}", filled(i))
        get(store, f"o{i}")
    gc.collect()
    mappings.release_idle()
    assert mappings.CACHE.stats()["idle"] <= 2
    for i in range(5):  # dropped ones are mapped again on demand
        assert get(store, f"o{i}")[0] == i


def test_the_writer_reuses_its_mapping_of_a_file_it_recycles_again(store):
    """The second write into one recycled file goes through the writable mapping
    the first one left, and each reader sees exactly what was last written."""
    first = put(store, "a", filled(1))
    store.free(["a"])
    assert put(store, "b", filled(2)) == first  # mapped for writing here
    key = (os.stat(os.path.join(store.shm_dir, "b")).st_dev, first)
    mapped = id(mappings.WRITERS._entries[key][0])
    assert np.array_equal(get(store, "b"), filled(2))
    gc.collect()
    store.free(["b"])
    assert put(store, "c", filled(3)) == first
    assert id(mappings.WRITERS._entries[key][0]) == mapped  # the same mapping, written again
    assert np.array_equal(get(store, "c"), filled(3))
    # Readers can pin it: the writer let go of its exclusive lock.
    fd = os.open(os.path.join(store.shm_dir, "c"), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_recyclable_names_the_objects_whose_files_free_would_pool(store):
    put(store, "big", filled(1))
    store.write("small", *serialization.dumps(b"x" * 1000))
    assert store.recyclable(["big", "small", "unknown"]) == ["big"]


def test_a_writers_mapping_of_a_file_that_is_gone_is_let_go(store):
    first = put(store, "a", filled(1))
    store.free(["a"])
    put(store, "b", filled(2))  # recycled: mapped for writing
    key = (os.stat(os.path.join(store.shm_dir, "b")).st_dev, first)
    assert key in mappings.WRITERS._entries
    os.unlink(os.path.join(store.shm_dir, "b"))
    mappings.release_idle()
    assert key not in mappings.WRITERS._entries


@orion.remote
def _two_mib(tag):
    return bytes([tag]) * (2 << 20)


def _inode(client, ref):
    return os.stat(os.path.join(client.node.store.shm_dir, ref.id)).st_ino


@pytest.mark.timeout(60)
def test_an_embedded_driver_releases_before_its_next_large_value_is_written():
    """The embedded driver tells the head of a dropped ref before the next
    large value is written (its put, or the result of its next task), so that
    value recycles the dropped one's file instead of writing a fresh one."""
    orion.init(num_workers=1)
    try:
        client = _current_client()
        first = orion.put(bytes(2 << 20))
        inode = _inode(client, first)
        del first
        gc.collect()
        second = orion.put(bytes(2 << 20))
        assert _inode(client, second) == inode  # the put recycled the released file
        result = _two_mib.remote(1)
        assert orion.get(result)[:1] == b"\x01"
        inode = _inode(client, result)
        del result
        gc.collect()
        again = _two_mib.remote(2)
        assert orion.get(again)[:1] == b"\x02"
        assert _inode(client, again) == inode  # the task's result recycled it
    finally:
        orion.shutdown()
