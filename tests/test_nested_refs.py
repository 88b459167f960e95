"""Refs that travel beyond their owner (inside a task's arguments, inside a
value, into a process that unpickles them): their objects live while anyone
may use them, and are freed after (``orion.nested_refs``).

Three levels: the table alone, the ``Head`` driven by hand through a fake
transport (the order of holds, releases, lineage, containers and borrows),
and clusters of both transports end to end."""
from __future__ import annotations

import gc
import random
import types

import pytest

import orion
from conftest import touch, wait_for_file
from helpers_cluster import wait_until
from orion.api import _current_client
from orion.head import Head, TaskRecord
from orion.nested_refs import NestedRefs
from orion.object_store import Holder, Remote
from orion.scheduler.events import Failure, TaskSpec
from orion.transport.base import HeadTransport


# ------------------------------------------------------------ the table alone
def test_a_release_waits_for_every_holder():
    refs = NestedRefs()
    refs.task_submitted("t1", ("a", "b"))
    refs.task_submitted("t2", ("a",))
    assert refs.releasable(["a", "b", "c"]) == ["c"]  # c is held by nothing: it goes at once
    assert refs.task_ended("t1") == ["b"]
    assert refs.task_ended("t2") == ["a"]
    assert not refs


def test_an_id_not_released_by_its_owner_is_not_freed_when_its_holders_end():
    refs = NestedRefs()
    refs.task_submitted("t1", ("a",))
    assert refs.task_ended("t1") == []  # the owner still has its ref
    assert refs.releasable(["a"]) == ["a"]


def test_a_task_submitted_twice_holds_once():
    refs = NestedRefs()
    refs.task_submitted("t1", ("a",))
    refs.task_submitted("t1", ("a",))  # a driver replaying to a restarted head
    refs.releasable(["a"])
    assert refs.task_ended("t1") == ["a"]
    assert refs.task_ended("t1") == []


def test_a_borrow_holds_until_the_borrower_lets_go_or_is_gone():
    refs = NestedRefs()
    refs.task_submitted("t1", ("a", "b"))
    refs.borrowed("w:1", ["a", "b"])
    refs.borrowed("w:1", ["a"])  # (once per borrower)
    assert refs.releasable(["a", "b"]) == []
    assert refs.task_ended("t1") == []
    assert refs.unborrowed("w:1", ["a"]) == ["a"]
    assert refs.unborrowed("w:2", ["b"]) == []  # not its borrow
    assert refs.peer_gone("w:1") == ["b"]
    assert not refs


def test_a_container_holds_what_its_value_names_until_it_is_freed():
    refs = NestedRefs()
    refs.contained("box", ("a",))
    refs.contained("box", ("a",))  # stored again (a re-run): counts once
    assert refs.releasable(["a"]) == []
    assert refs.holds("a") == 1
    assert refs.container_freed("box") == ["a"]
    assert refs.container_freed("box") == []


def test_lineage_holds_like_a_task():
    refs = NestedRefs()
    refs.task_submitted("t1", ("a",))
    refs.lineage_kept(("a",))
    refs.releasable(["a"])
    assert refs.task_ended("t1") == []
    assert refs.holds("a") == 1
    assert refs.lineage_dropped(("a",)) == ["a"]


# ------------------------------------------------------- the head, by hand
class FakeTransport(HeadTransport):
    def __init__(self):
        self.dispatched, self.freed = [], []

    def dispatch(self, worker_id, spec, inputs, function, nested=False):
        self.dispatched.append((worker_id, spec.task_id))

    def deliver(self, peer_id, object_id, entry):
        pass

    def free(self, holder_id, object_ids):
        self.freed.extend(object_ids)

    def interrupt(self, worker_id, task_id, force):
        pass

    def start_worker(self, node_id):
        pass

    def stop_worker(self, worker_id):
        pass

    def recall(self, worker_id, task_ids):
        pass


def make_head():
    head = Head(FakeTransport())
    head.holder_joined("n1", _holder("n1"))
    head.node_joined("n1", {"CPU": 1.0}, 1)
    head.worker_joined("w1", "n1")
    head.register_function("f", "function")
    return head


def _holder(node_id):
    return Holder(node_id, f"tcp://{node_id}")


def spec(task_id, holds=(), deps=()):
    record = TaskRecord("f", (b"args", ()), 1, False, "c:driver", holds)
    return TaskSpec(task_id, (task_id + "0001",), deps, {"CPU": 1.0}, 3, task_id, record)


def stored(head, object_id):
    return head.scheduler.object_status(object_id) is not None


def test_the_head_frees_a_nested_object_once_its_owner_and_the_task_let_go():
    head = make_head()
    head.put("c:driver", "inner", (b"v", ()))
    head.submit([spec("t1", holds=("inner",))])
    head.release(["inner"])  # the driver dropped its ref while t1 still runs
    assert stored(head, "inner")
    head.task_done("w1", "t1", [(b"r", ())])
    assert not stored(head, "inner") and "inner" not in head.store


def test_a_departed_owners_tasks_are_cancelled_unless_another_holds_their_results():
    head = make_head()
    head.submit([spec("running"), spec("borrowed"), spec("queued")])  # one worker: two wait
    head.refs("c:other", borrowed=["borrowed0001"])  # another driver got a ref to its result
    head.put("c:driver", "value", (b"v", ()))
    head.owners_gone(["c:driver"])
    assert head.scheduler.task_state("borrowed") is not None  # someone waits for it: it runs
    assert head.scheduler.task_state("queued") is None  # cancelled
    assert head.scheduler.task_state("running") is not None  # asked to stop (interrupted)...
    head.task_failed("w1", "running", Failure("cancelled", "interrupted"), cancelled=True)
    assert head.scheduler.task_state("running") is None  # ...and stopped
    assert not stored(head, "value") and not stored(head, "queued0001")  # released
    assert stored(head, "borrowed0001")
    head.task_done("w1", "borrowed", [(b"r", ())])
    assert stored(head, "borrowed0001")  # the other driver holds it
    head.refs("c:other", unborrowed=["borrowed0001"])
    assert not stored(head, "borrowed0001")


def test_the_head_keeps_what_a_worker_borrows_until_it_lets_go_or_dies():
    head = make_head()
    head.put("c:driver", "inner", (b"v", ()))
    head.submit([spec("t1", holds=("inner",))])
    head.release(["inner"])
    head.refs("w:w1", borrowed=["inner"])  # the task kept the ref (said before its report)
    head.task_done("w1", "t1", [(b"r", ())])
    assert stored(head, "inner")
    head.refs("w:w1", unborrowed=["inner"])
    assert not stored(head, "inner")
    head.put("c:driver", "other", (b"v", ()))
    head.refs("w:w1", borrowed=["other"])
    head.release(["other"])
    assert stored(head, "other")
    head.worker_lost("w1", "killed")
    assert not stored(head, "other")


def test_the_head_frees_what_a_value_names_after_the_value():
    head = make_head()
    head.put("c:driver", "inner", (b"v", ()))
    head.put("c:driver", "box", (b"[inner]", ()))
    head.refs("c:driver", contained=[["box", ["inner"]]])
    head.release(["inner"])
    assert stored(head, "inner")
    head.release(["box"])
    assert not stored(head, "box") and not stored(head, "inner")


def test_a_task_result_holds_the_refs_inside_it():
    head = make_head()
    head.put("w:w1", "child", (b"v", ()))
    head.submit([spec("t1")])
    head.task_done("w1", "t1", [(b"[child]", ())], contained=[["t10001", ["child"]]])
    head.refs("w:w1", released=["child"])  # the worker let go of its ref (after its report)
    assert stored(head, "child")
    head.refs("c:driver", borrowed=["child"])  # the driver unpickled the result
    head.release(["t10001"])
    assert stored(head, "child")
    head.refs("c:driver", unborrowed=["child"])
    assert not stored(head, "child")


def test_a_failed_task_lets_go_of_its_nested_refs():
    head = make_head()
    head.put("c:driver", "inner", (b"v", ()))
    head.submit([spec("t1", holds=("inner",))])
    head.release(["inner"])
    head.task_failed("w1", "t1", Failure("task_error", "boom"))
    assert not stored(head, "inner")


def test_a_cancelled_queued_task_lets_go_of_its_nested_refs():
    head = make_head()
    head.put("c:driver", "inner", (b"v", ()))
    head.submit([spec("t0"), spec("t1", holds=("inner",))])  # t1 queues behind t0 (one worker)
    head.release(["inner"])
    head.cancel("t1")
    assert not stored(head, "inner")


def test_a_kept_lineage_holds_the_nested_refs_its_re_run_needs():
    """A task with a large result keeps its spec as lineage while the result is
    referenced: the objects its arguments name stay with it, and go with it."""
    head = make_head()
    head.put("c:driver", "inner", (b"v", ()))
    head.submit([spec("t1", holds=("inner",))])
    head.release(["inner"])
    head.task_done("w1", "t1", [Remote(1 << 20, ())], node_id="n1")
    assert "t10001" in head.lineage
    assert stored(head, "inner"), "the lineage of t1's large result must keep its nested ref"
    head.release(["t10001"])  # the result goes: so does its lineage, and the nested object
    assert "t10001" not in head.lineage
    assert not stored(head, "inner")


def test_only_the_accepted_report_of_a_task_says_what_its_result_holds():
    """A late report of a task's earlier attempt names refs of its own (say
    children that attempt made): they must not stand for the accepted result's."""
    head = make_head()
    head.put("w:w1", "first-child", (b"v", ()))
    head.put("w:w2", "second-child", (b"v", ()))
    head.submit([spec("t1")])
    assert head.transport.dispatched == [("w1", "t1")]
    head.worker_lost("w1", "evicted")  # the task is retried on the next worker
    head.worker_joined("w2", "n1")
    assert head.transport.dispatched[-1] == ("w2", "t1")
    head.task_done("w1", "t1", [(b"[first-child]", ())], contained=[["t10001", ["first-child"]]])  # stale
    head.task_done("w2", "t1", [(b"[second-child]", ())], contained=[["t10001", ["second-child"]]])
    head.release(["first-child", "second-child"])
    assert stored(head, "second-child") and not stored(head, "first-child")


# ----------------------------------------------------------------- end to end
@orion.remote
def inc(x):
    return x + 1


@orion.remote
def total(refs):
    return sum(orion.get(refs))


_STASH = []


@orion.remote
def stash(refs):
    _STASH.extend(refs)  # kept past the task: its object must stay
    return len(_STASH)


@orion.remote
def read_stash():
    return orion.get(_STASH[-1])


@orion.remote
def echo(value):
    return value


@orion.remote
def hand_on(refs, gate):
    return later.remote(refs, gate)  # returns a ref; ``refs`` travel on, nested, to the child


@orion.remote
def later(refs, gate):
    wait_for_file(gate)
    return sum(orion.get(refs))


def head_counts():
    client = _current_client()
    head = client.head if hasattr(client, "head") else client.runtime.head
    return len(head.scheduler._objects), len(head.store)


def flush_releases():
    gc.collect()
    orion.get(inc.remote(0))  # any call hands the releases over


@pytest.mark.timeout(120)
def test_refs_passed_in_a_list_are_freed_once_the_task_is_done(cluster):
    """The map-reduce shape: a reduce task takes its parts as a list of refs.
    Before, every part passed that way was kept for good."""
    for _ in range(5):
        parts = [inc.remote(i) for i in range(200)]
        assert orion.get(total.remote(parts)) == sum(range(1, 201))
        del parts
    flush_releases()
    scheduler, head = head_counts()
    assert scheduler < 20 and head < 20, (scheduler, head)


@pytest.mark.timeout(120)
def test_large_parts_passed_in_a_list_leave_the_node_store(cluster, transport):
    if transport != "zmq":
        pytest.skip("the node store belongs to the ZeroMQ runtime")
    for _ in range(3):
        parts = [echo.remote(bytes(1 << 20)) for _ in range(4)]
        assert orion.get(total_len.remote(parts)) == 4 << 20
        del parts
    flush_releases()
    assert [node["store_bytes"] for node in orion.nodes()] == [0]


@orion.remote
def total_len(refs):
    return sum(len(value) for value in orion.get(refs))


def test_a_nested_ref_outlives_the_drivers_copy_while_the_task_runs(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    inner = inc.remote(4)
    ref = later.remote([inner], gate)
    del inner
    flush_releases()  # the release reaches the head while the task waits
    touch(gate)
    assert orion.get(ref, timeout=30) == 5


def test_a_task_that_keeps_a_nested_ref_keeps_its_object(make_cluster):
    make_cluster(num_workers=1)  # (the second task runs where the first kept the ref)
    inner = orion.put(41)
    assert orion.get(stash.remote([inner])) >= 1
    del inner
    flush_releases()
    assert orion.get(read_stash.remote(), timeout=30) == 41


def test_a_nested_ref_returned_by_the_task_stays_gettable(cluster):
    inner = inc.remote(1)
    box = echo.remote([inner])
    del inner
    flush_releases()
    (back,) = orion.get(box)
    flush_releases()
    assert orion.get(back, timeout=30) == 2


def test_a_nested_ref_handed_on_to_a_child_outlives_the_parent(cluster, tmp_path):
    """The parent ends before its child runs: the child's own hold (its submit
    reaches the head before the parent's report) keeps the object."""
    gate = str(tmp_path / "gate")
    inner = inc.remote(9)
    child = orion.get(hand_on.remote([inner], gate), timeout=30)
    del inner
    flush_releases()
    touch(gate)
    assert orion.get(child, timeout=30) == 10


def test_a_ref_both_top_level_and_nested_is_freed_after_the_task(cluster):
    @orion.remote
    def both(value, refs):
        return value + orion.get(refs[0])

    inner = inc.remote(1)
    assert orion.get(both.remote(inner, [inner])) == 4
    object_id = inner.id
    del inner
    flush_releases()
    client = _current_client()
    head = client.head if hasattr(client, "head") else client.runtime.head
    assert head.scheduler.object_status(object_id) is None


def test_a_worker_that_keeps_a_ref_borrows_it(needs_processes, make_cluster):
    """Over the wire: a task that keeps a nested ref has its worker borrow it
    (the head holds the object while it does); one that does not, does not."""
    make_cluster(num_workers=1)
    kept, dropped = orion.put(1), orion.put(2)
    orion.get(stash.remote([kept]))
    orion.get(total.remote([dropped]))
    head = _current_client().head
    assert head.nested.holds(kept.id) == 1 and head.nested.holds(dropped.id) == 0


def test_the_refs_a_lost_nodes_workers_borrowed_are_let_go(needs_processes, cluster):
    client = _current_client()
    head, server = client.head, client.server
    with server.lock:
        head.put("c:other", "borrowed", (b"v", ()))
        head.refs("w:gone-w1", borrowed=["borrowed"])
        head.refs("c:other", released=["borrowed"])
        assert head.scheduler.object_status("borrowed") is not None
        server._lose_node(types.SimpleNamespace(alive=True, workers={"gone-w1": None}, node_id="gone"), "test")
        assert head.scheduler.object_status("borrowed") is None


@orion.remote
def make_children(n):
    return [inc.remote(i) for i in range(n)]  # refs of the worker's own, returned inside a value


@pytest.mark.timeout(120)
def test_refs_returned_inside_a_result_are_freed_once_nobody_holds_them(cluster):
    for _ in range(5):
        children = orion.get(make_children.remote(50))
        assert orion.get(children) == list(range(1, 51))
        del children
    flush_releases()
    flush_releases()
    scheduler, head = head_counts()
    assert scheduler < 20 and head < 20, (scheduler, head)


@pytest.mark.timeout(120)
def test_refs_inside_a_put_value_are_freed_with_it(cluster):
    for _ in range(5):
        parts = [inc.remote(i) for i in range(100)]
        box = orion.put(parts)
        del parts
        flush_releases()
        assert sum(orion.get(orion.get(box))) == sum(range(1, 101))  # the parts outlive our refs to them
        del box
    flush_releases()
    scheduler, head = head_counts()
    assert scheduler < 20 and head < 20, (scheduler, head)


# ------------------------------------------------------------ randomized mix
@orion.remote
def make(value):
    return value


@orion.remote
def wrap(refs):
    return list(refs)  # others' refs, handed on inside the result


@orion.remote
def wrap_large(refs):
    return [*refs, bytes(150_000)]  # a result over the inline limit: kept in the node's store


@orion.remote
def spawn(count, base):
    return [make.remote(base + k) for k in range(count)]  # refs of its own, inside the result


@orion.remote
def deref_sum(refs):
    return sum(orion.get(list(refs)))


@orion.remote
def unbox_sum(boxes):
    # refs inside values inside arguments
    return sum(sum(orion.get([item for item in orion.get(box) if isinstance(item, orion.ObjectRef)]))
               for box in boxes)


def _random_mix(rng, steps):
    """``steps`` random operations; returns what is still held: ``plain``
    [(ref, value)] and ``boxes`` [(ref to a list of refs, their values)]."""
    plain, boxes = [], []
    counter = iter(range(1_000_000))
    for _ in range(steps):
        op = rng.random()
        if op < 0.25 or len(plain) < 4:
            value = next(counter)
            plain.append((make.remote(value), value))
        elif op < 0.4:
            picked = rng.sample(plain, rng.randint(1, 4))
            boxes.append((wrap.remote([ref for ref, _ in picked]), [value for _, value in picked]))
        elif op < 0.45:
            picked = rng.sample(plain, rng.randint(1, 4))
            boxes.append((wrap_large.remote([ref for ref, _ in picked]), [value for _, value in picked]))
        elif op < 0.5:
            base = next(counter) * 100
            count = rng.randint(1, 4)
            boxes.append((spawn.remote(count, base), [base + k for k in range(count)]))
        elif op < 0.6:
            picked = rng.sample(plain, rng.randint(1, 4))
            boxes.append((orion.put([ref for ref, _ in picked]), [value for _, value in picked]))
        elif op < 0.7:
            picked = rng.sample(plain, rng.randint(1, 4))
            plain.append((deref_sum.remote([ref for ref, _ in picked]), sum(value for _, value in picked)))
        elif op < 0.75 and boxes:
            picked = rng.sample(boxes, min(len(boxes), rng.randint(1, 3)))
            plain.append((unbox_sum.remote([box for box, _ in picked]), sum(sum(values) for _, values in picked)))
        elif op < 0.8 and boxes:
            # Keep the refs out of a box, drop the box: ours now hold them alone.
            box, values = boxes.pop(rng.randrange(len(boxes)))
            plain.extend(zip(_refs_in(orion.get(box, timeout=30)), values))
            del box
        elif op < 0.9:
            for pool in (plain, boxes):
                if len(pool) > 2:
                    del pool[rng.randrange(len(pool))]
            gc.collect()
        else:
            _check(rng.sample(plain, 1), rng.sample(boxes, min(1, len(boxes))))
    return plain, boxes


def _check(plain, boxes):
    for ref, value in plain:
        assert orion.get(ref, timeout=30) == value
    for box, values in boxes:
        assert orion.get(_refs_in(orion.get(box, timeout=30)), timeout=30) == values


def _refs_in(items):
    return [item for item in items if isinstance(item, orion.ObjectRef)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_random_mix_of_travelling_refs_loses_nothing_and_leaks_nothing(cluster, transport, seed):
    """Refs passed in arguments, returned inside results (others' and the
    task's own), put inside values, and dropped at random: every ref still
    held gives its value, and once all are dropped nothing is left."""
    plain, boxes = _random_mix(random.Random(seed), 300)
    _check(plain, boxes)
    del plain, boxes
    for _ in range(3):  # (a release can free a value whose refs are then released in turn)
        flush_releases()
    scheduler, head = head_counts()
    assert scheduler < 20 and head < 20, (scheduler, head)
    if transport == "zmq":
        assert [node["store_bytes"] for node in orion.nodes()] == [0]


@orion.remote(max_retries=0)
def hold_and_wait(refs, gate):
    global _HELD
    _HELD = list(refs)  # borrowed by this worker while it waits
    inc.remote(0)  # (a call: the worker hands its borrows over)
    wait_for_file(gate, timeout=60)
    return sum(orion.get(_HELD))


_HELD = []


def _mix_with_killed_borrowers(rng, gates):
    """``_random_mix`` with tasks that keep refs killed in between (their
    workers borrowed them); returns what is still held, and the ids the
    killed workers borrowed."""
    plain, boxes = _random_mix(rng, 60)
    head = _current_client().head
    borrowed = set()
    for gate in gates:
        picked = [ref for ref, _ in rng.sample(plain, min(len(plain), 3))]
        doomed = hold_and_wait.remote(picked, gate)
        # Held by the task's arguments and by its worker's borrow:
        wait_until(lambda: all(head.nested.holds(ref.id) >= 2 for ref in picked), 30,
                   message="the waiting task's worker never borrowed its refs")
        borrowed.update(ref.id for ref in picked)
        orion.cancel(doomed, force=True)
        with pytest.raises(orion.TaskCancelledError):
            orion.get(doomed, timeout=30)
        more_plain, more_boxes = _random_mix(rng, 40)
        plain += more_plain
        boxes += more_boxes
    return plain, boxes, borrowed


@pytest.mark.timeout(180)
def test_refs_a_killed_worker_borrowed_are_freed_and_nothing_else_is(needs_processes, cluster, tmp_path):
    """Tasks that keep refs are killed (``cancel(force=True)``) at random in
    the mix: their workers' borrows go with them, every ref still held gives
    its value, and once all are dropped nothing is left."""
    plain, boxes, borrowed = _mix_with_killed_borrowers(random.Random(7),
                                                        [str(tmp_path / f"gate{i}") for i in range(3)])
    _check(plain, boxes)
    del plain, boxes
    for _ in range(3):
        flush_releases()
    head = _current_client().head
    assert [i for i in borrowed if head.scheduler.object_status(i) is not None] == []
    scheduler, head_objects = head_counts()
    assert scheduler < 20 and head_objects < 20, (scheduler, head_objects)
    assert [node["store_bytes"] for node in orion.nodes()] == [0]


_KEPT = []


@orion.remote
def keep_children_and_wait(count, gate):
    """Submits children and keeps their refs in a global: its worker owns
    their results and never releases them while it lives."""
    _KEPT.extend(inc.remote(i) for i in range(count))
    orion.get(_KEPT[-count:])
    wait_for_file(gate, timeout=60)
    return 0


@pytest.mark.timeout(120)
def test_what_a_killed_worker_owned_is_freed(needs_processes, cluster, tmp_path):
    """A worker process owns the results of the tasks its tasks submit. Killed
    (``cancel(force=True)``) while it still held refs to them, its objects
    are released as a departed driver's are, instead of kept for good."""
    head = _current_client().head
    doomed = keep_children_and_wait.remote(20, str(tmp_path / "gate"))

    def owned_by_workers():
        return [object_id for object_id, owner in list(head.owners.items()) if owner.startswith("w:")]

    owned = wait_until(lambda: len(owned_by_workers()) >= 20 and owned_by_workers(), 30,
                       message=lambda: f"the task's children are not all in: {owned_by_workers()}")
    wait_until(lambda: all(head.scheduler.object_status(i) == "ready" for i in owned), 30,
               message="the children did not finish")
    orion.cancel(doomed, force=True)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(doomed, timeout=30)
    flush_releases()
    wait_until(lambda: all(head.scheduler.object_status(i) is None for i in owned), 30,
               message=lambda: f"kept: {[i for i in owned if head.scheduler.object_status(i) is not None]}")
    assert [i for i in owned if i in head.store] == []
