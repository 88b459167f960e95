"""Objects are freed once nothing can use them: no ObjectRef in the driver and
no pending task that needs them (for refs that travel inside arguments and
values, see test_nested_refs)."""
from __future__ import annotations

import gc
import os
import threading

import pytest

import orion
from orion.api import _current_client


@orion.remote
def inc(x):
    return x + 1


@orion.remote
def get_nested(refs):
    return orion.get(refs[0]) * 10


def head_of(client):
    return client.head if hasattr(client, "head") else client.runtime.head


def counts():
    client = _current_client()
    head = head_of(client)
    return len(client.store), len(head.scheduler._objects), len(head.store)


@pytest.mark.timeout(120)
def test_dropped_refs_are_freed_everywhere(cluster):
    for _ in range(6):
        refs = [inc.remote(i) for i in range(2000)]
        assert orion.get(refs)[-1] == 2000
        del refs
    gc.collect()
    orion.get(inc.remote(0))  # any call hands the releases over
    driver, scheduler, head = counts()
    # Only what the last round could not yet release may remain, never all 12,000.
    assert driver <= 2100 and scheduler <= 2100 and head <= 2100, (driver, scheduler, head)


def test_a_release_reaches_the_head_with_the_next_submit_or_put(cluster):
    """The head in this process hears of dropped refs within the driver's next
    submit or put (the embedded cluster hands them over with the submit)."""
    head = head_of(_current_client())
    for call in (lambda: inc.remote(5), lambda: orion.put(5)):
        ref = inc.remote(1)
        assert orion.get(ref) == 2
        object_id = ref.id
        assert object_id in head.store
        del ref
        gc.collect()
        call()
        assert object_id not in head.store


def test_a_submit_that_cannot_pickle_its_arguments_leaves_releases_to_the_next_call(cluster):
    head = head_of(_current_client())
    ref, other = inc.remote(1), inc.remote(2)
    assert orion.get(ref) == 2
    object_id = ref.id
    del ref
    gc.collect()
    with pytest.raises(TypeError, match="cannot be pickled"):
        inc.remote(threading.Lock())
    assert orion.get(other) == 3  # a get hands over releases at once
    assert object_id not in head.store


def test_a_chain_of_dropped_intermediates_still_gives_the_answer(cluster):
    ref = orion.put(0)
    for _ in range(300):
        ref = inc.remote(ref)  # each intermediate ref dies as soon as the next is made
    assert orion.get(ref) == 300


def test_a_ref_nested_in_arguments_outlives_the_drivers_copy(cluster):
    inner = inc.remote(4)
    outer = get_nested.remote([inner])  # nested: the task gets the ref, not the value
    del inner
    gc.collect()
    orion.get(inc.remote(0))  # hands releases over (the nested ref must not be among them)
    assert orion.get(outer) == 50


def test_a_put_value_holding_a_ref_keeps_it(cluster):
    inner = inc.remote(1)
    box = orion.put([inner])
    del inner
    gc.collect()
    orion.get(inc.remote(0))
    (ref,) = orion.get(box)
    assert orion.get(ref) == 2


def test_dropping_the_ref_of_a_running_task_is_harmless(cluster):
    for _ in range(50):
        inc.remote(1)  # dropped at once, while queued or running
    gc.collect()
    assert orion.get([inc.remote(i) for i in range(10)]) == list(range(1, 11))


def _rss_mib():
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.timeout(180)
def test_a_million_dropped_refs_keep_memory_flat(cluster):
    """A driver that makes and drops a million small refs in a loop: the
    driver's store, the head's store and the scheduler stay tiny, and so does
    the process's memory growth after warm-up."""
    for i in range(1_000_000):
        ref = orion.put(i)
        if i == 100_000:
            warm = _rss_mib()
    del ref
    driver, scheduler, head = counts()
    assert driver < 1000 and scheduler < 1000 and head < 1000, (driver, scheduler, head)
    assert _rss_mib() - warm < 30, f"memory grew by {_rss_mib() - warm:.1f} MiB over 900,000 refs"
