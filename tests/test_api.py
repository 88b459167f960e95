"""The Python API table of /work/shared/API.md, row by row, on every transport."""
from __future__ import annotations

import concurrent.futures
import os
import pickle
import re
import string
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest

import orion
from orion.api import _current_client
from conftest import (bump_counter, intervals_overlap, read_counter, start_cluster, touch,
                      wait_for_file, wait_until)


# ------------------------------------------------------------ remote functions
@orion.remote
def identity(x):
    return x


@orion.remote
def add(x, y=0):
    return x + y


@orion.remote
def square(x):
    return x * x


@orion.remote
def blocker(gate, started=None, result="released"):
    """Runs until the file ``gate`` exists; ``started`` is touched first."""
    if started is not None:
        touch(started)
    wait_for_file(gate)
    return result


@orion.remote
def write_marker(path, *args, **kwargs):
    touch(path)
    return "ran"


@orion.remote
def span(duration):
    """When it ran: (start, end) on the system-wide monotonic clock."""
    start = time.perf_counter()
    time.sleep(duration)
    return start, time.perf_counter()


@orion.remote
def rendezvous(directory, me, everyone, timeout=15.0):
    """Returns only if every task of ``everyone`` runs at the same time as this one."""
    touch(os.path.join(directory, f"rv-{me}"))
    for other in everyone:
        wait_for_file(os.path.join(directory, f"rv-{other}"), timeout)
    return me


@orion.remote
def interruptible(started, interrupted, timeout=20.0):
    touch(started)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.005)
    except KeyboardInterrupt:
        touch(interrupted)
        raise
    return "not interrupted"


@orion.remote
def stubborn(started, stop, timeout=20.0):
    """Swallows KeyboardInterrupt: only cancel(force=True) gets rid of it."""
    touch(started)
    deadline = time.monotonic() + timeout
    while not os.path.exists(stop) and time.monotonic() < deadline:
        try:
            time.sleep(0.005)
        except KeyboardInterrupt:
            pass
    return "finished"


@orion.remote
def counted(counter, started=None, timeout=20.0):
    """Counts its runs, then sleeps until cancelled (or ``timeout``); then raises."""
    bump_counter(counter)
    if started is not None:
        touch(started)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.005)
    raise ValueError("ran to the end")


@orion.remote
def get_inside(ref_holder, started=None, interrupted=None):
    """Waits in orion.get inside the task."""
    if started is not None:
        touch(started)
    try:
        return orion.get(ref_holder[0])
    except KeyboardInterrupt:
        if interrupted is not None:
            touch(interrupted)
        raise


@orion.remote
def fail(message="boom"):
    raise ValueError(message)


@orion.remote
def inspect_container(container):
    """Reports the types it got, then resolves the refs itself."""
    items = list(container.values()) if isinstance(container, dict) else list(container)
    return [type(item).__name__ for item in items], orion.get(items)


@orion.remote
def check_ran_after(value, marker):
    return value, os.path.exists(marker)


@orion.remote
def gated_writer(gate, marker, value):
    wait_for_file(gate)
    touch(marker)
    return value


@orion.remote
def make_put_ref(value):
    return orion.put(value)


@orion.remote
def submit_child(x):
    return square.remote(x)  # a ref created inside a task, returned unresolved


@orion.remote
def fib(n):
    if n < 2:
        return n
    return sum(orion.get([fib.remote(n - 1), fib.remote(n - 2)]))


@orion.remote
def nested_sum(depth):
    if depth == 0:
        return 0
    return 1 + orion.get(nested_sum.remote(depth - 1))


@orion.remote
def flaky(counter, fail_times, exc_class=ValueError):
    """Raises ``exc_class("attempt N")`` on its first ``fail_times`` runs."""
    attempt = bump_counter(counter)
    if attempt <= fail_times:
        raise exc_class(f"attempt {attempt}")
    return attempt


@orion.remote
def exit_process(counter, crash_times):
    """Kills its own worker process on its first ``crash_times`` runs."""
    attempt = bump_counter(counter)
    if attempt <= crash_times:
        os._exit(17)
    return attempt


@orion.remote(num_returns=3)
def three():
    return 1, 2, 3


def _cpu(node_or_resources):
    return node_or_resources["CPU"]


def _children_of(pid):
    """Live (non-zombie) descendant processes of ``pid``, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _socket_fds():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


# ------------------------------------------------------ init / shutdown / is_initialized
def test_init_shutdown_is_initialized(transport):
    assert orion.is_initialized() is False
    info = start_cluster(transport, num_workers=2)
    try:
        assert orion.is_initialized() is True
        if transport == "inproc":
            assert info.address is None
        else:
            assert re.fullmatch(r"tcp://[^:/]+:\d+", info.address), info.address
        assert orion.get(square.remote(7)) == 49
    finally:
        orion.shutdown()
    assert orion.is_initialized() is False


def test_init_twice_raises_runtime_error(cluster, transport):
    with pytest.raises(RuntimeError):
        start_cluster(transport, num_workers=1)
    with pytest.raises(RuntimeError):
        orion.init(transport="inproc", num_workers=1)
    # The first cluster is untouched.
    assert orion.is_initialized()
    assert orion.get(add.remote(1, 2)) == 3
    assert _cpu(orion.cluster_resources()) == 2


def test_shutdown_twice_is_safe(transport):
    orion.shutdown()  # never initialized: nothing to do
    start_cluster(transport)
    orion.shutdown()
    orion.shutdown()
    assert not orion.is_initialized()


def test_reinit_after_shutdown(transport):
    for _ in range(2):
        start_cluster(transport, num_workers=1)
        assert orion.get(square.remote(3)) == 9
        orion.shutdown()


def test_context_manager_shuts_down(transport):
    with start_cluster(transport, num_workers=2) as info:
        assert orion.is_initialized()
        assert (info.address is None) == (transport == "inproc")
        assert orion.get(square.remote(4)) == 16
    assert not orion.is_initialized()


def test_context_manager_shuts_down_on_error(transport):
    with pytest.raises(KeyError):
        with start_cluster(transport, num_workers=1):
            raise KeyError("user error")
    assert not orion.is_initialized()


def test_default_num_workers_is_cpu_count(transport):
    if transport == "zmq":
        orion.init()
    else:
        orion.init(transport=transport)
    assert _cpu(orion.cluster_resources()) == (os.cpu_count() or 1)


def test_node_offers_cpu_per_worker_plus_custom_resources(make_cluster):
    make_cluster(num_workers=3, resources={"GPU": 2, "disk": 0.5})
    (node,) = orion.nodes()
    assert node["resources"]["CPU"] == 3
    assert node["resources"]["GPU"] == 2
    assert node["resources"]["disk"] == 0.5


@pytest.mark.timeout(30)
def test_shutdown_leaves_no_threads_processes_or_sockets(transport):
    threads_before = set(threading.enumerate())
    children_before = _children_of(os.getpid())
    sockets_before = _socket_fds()
    start_cluster(transport, num_workers=2)
    assert orion.get([square.remote(i) for i in range(10)]) == [i * i for i in range(10)]
    assert square.remote(2).future().result(timeout=10) == 4
    orion.shutdown()
    wait_until(lambda: set(t for t in threading.enumerate() if t.is_alive()) <= threads_before,
               message="threads started by init are still alive after shutdown")
    wait_until(lambda: _children_of(os.getpid()) <= children_before,
               message="processes started by init are still running after shutdown")
    wait_until(lambda: _socket_fds() <= sockets_before, message="sockets are still open after shutdown")


_EXTERNAL_CLUSTER = """
import sys
import orion
from orion.api import _current_client
from orion.api import _current_client
info = orion.init(num_workers=2)
print(info.address, flush=True)
sys.stdin.read()  # until the test closes our stdin
orion.shutdown()
"""


@pytest.fixture
def external_cluster(transport):
    """(address, pid) of an embedded cluster that another process started."""
    if transport != "zmq":
        pytest.skip("connecting to a head by address needs the ZeroMQ runtime")
    env = {k: v for k, v in os.environ.items() if k != "ORION_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-c", _EXTERNAL_CLUSTER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("tcp://"), f"the external cluster did not start: {address!r}"
        yield address, proc.pid
    finally:
        orion.shutdown()
        proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_init_with_address_connects_and_starts_nothing(external_cluster, monkeypatch):
    external_cluster, external_pid = external_cluster

    def own_processes():  # ours, not the external cluster's
        return _children_of(os.getpid()) - {external_pid} - _children_of(external_pid)

    before = own_processes()
    info = orion.init(external_cluster)
    assert info.address == external_cluster
    assert orion.is_initialized()
    assert own_processes() == before  # a driver only: no head, no workers here
    assert orion.get([square.remote(i) for i in range(5)]) == [0, 1, 4, 9, 16]
    assert orion.cluster_resources()["CPU"] == 2
    with pytest.raises(RuntimeError):
        orion.init(external_cluster)
    orion.shutdown()
    # Disconnecting stopped nothing: the cluster still serves, found through ORION_ADDRESS.
    monkeypatch.setenv("ORION_ADDRESS", external_cluster)
    info = orion.init()
    assert info.address == external_cluster
    assert orion.get(add.remote(2, y=orion.put(3))) == 5
    orion.shutdown()


# ------------------------------------------------------------------ @orion.remote
def test_remote_without_parentheses(cluster):
    assert isinstance(square, orion.RemoteFunction)
    assert orion.get(square.remote(5)) == 25


def test_remote_with_empty_parentheses_and_options(cluster):
    @orion.remote()
    def plain(x):
        return x + 1

    @orion.remote(num_cpus=1, max_retries=0, name="named")
    def with_options(x):
        return x + 2

    assert orion.get([plain.remote(1), with_options.remote(1)]) == [2, 3]


def test_remote_function_keeps_metadata():
    assert square.__name__ == "square"
    assert square.__wrapped__(3) == 9  # the plain function is still reachable


def test_calling_remote_function_directly_raises_type_error():
    with pytest.raises(TypeError, match=r"\.remote"):
        square(3)
    with pytest.raises(TypeError, match=r"\.remote"):
        square.options(num_cpus=1)(3)


def test_remote_on_non_callable_raises_type_error():
    with pytest.raises(TypeError):
        orion.remote(42)
    with pytest.raises(TypeError):
        orion.remote(num_cpus=1)("not a function")


def test_remote_returns_at_once_without_waiting_for_execution(cluster, tmp_path):
    gate = tmp_path / "gate"
    started = tmp_path / "started"
    ref = blocker.remote(str(gate), str(started))  # would hang here if .remote waited
    assert isinstance(ref, orion.ObjectRef)
    wait_until(started.exists)
    ready, _ = orion.wait([ref], timeout=0)
    assert ready == []
    touch(gate)
    assert orion.get(ref) == "released"


def test_remote_accepts_positional_and_keyword_args(cluster):
    assert orion.get(add.remote(1, 2)) == 3
    assert orion.get(add.remote(1, y=5)) == 6
    assert orion.get(add.remote(x=2, y=5)) == 7


# ----------------------------------------------------------------- .options()
def test_options_override_decorator_and_leave_it_unchanged(cluster):
    @orion.remote(num_returns=2, name="decorated")
    def pair():
        return "a", "b"

    refs = pair.remote()
    assert isinstance(refs, list) and len(refs) == 2
    assert orion.get(refs) == ["a", "b"]
    single = pair.options(num_returns=1).remote()
    assert isinstance(single, orion.ObjectRef)
    assert orion.get(single) == ("a", "b")
    assert len(pair.remote()) == 2  # the decorator's options are untouched


def test_options_name_overrides_decorator_name(cluster):
    @orion.remote(name="decorator-name")
    def broken():
        raise ValueError("nope")

    with pytest.raises(ValueError, match="decorator-name"):
        orion.get(broken.remote())
    with pytest.raises(ValueError, match="override-name") as info:
        orion.get(broken.options(name="override-name").remote())
    assert "decorator-name" not in str(info.value)


def test_options_chain_merges(cluster):
    f = fail.options(name="first").options(max_retries=0)
    with pytest.raises(ValueError, match="first"):
        orion.get(f.remote())


# ------------------------------------------------------------------- num_cpus
def test_default_tasks_run_concurrently(cluster, tmp_path):
    names = ["a", "b"]
    refs = [rendezvous.remote(str(tmp_path), n, names) for n in names]
    assert orion.get(refs) == names


def test_num_cpus_2_serializes_tasks_on_2_cpus(cluster):
    spans = orion.get([span.options(num_cpus=2).remote(0.05) for _ in range(4)])
    assert not intervals_overlap(spans), spans


def test_num_cpus_fraction_packs_more_tasks(cluster, tmp_path):
    names = ["a", "b", "c", "d"]
    refs = [rendezvous.options(num_cpus=0.5).remote(str(tmp_path), n, names) for n in names]
    assert orion.get(refs) == names


@pytest.mark.timeout(30)
def test_num_cpus_more_than_cluster_errors_at_get(cluster):
    ref = square.options(num_cpus=3).remote(2)
    with pytest.raises(orion.OrionError, match="CPU"):
        orion.get(ref)
    assert orion.get(square.remote(2)) == 4


# ------------------------------------------------------------------ resources
def test_custom_resource_limits_concurrency(make_cluster):
    make_cluster(num_workers=2, resources={"GPU": 1})
    spans = orion.get([span.options(resources={"GPU": 1}).remote(0.05) for _ in range(3)])
    assert not intervals_overlap(spans), spans


def test_fractional_custom_resource_allows_sharing(make_cluster, tmp_path):
    make_cluster(num_workers=2, resources={"GPU": 1})
    names = ["a", "b"]
    refs = [rendezvous.options(resources={"GPU": 0.5}).remote(str(tmp_path), n, names) for n in names]
    assert orion.get(refs) == names


def test_decorator_resources(make_cluster):
    make_cluster(num_workers=2, resources={"GPU": 1})

    @orion.remote(resources={"GPU": 1})
    def timed(duration):
        start = time.perf_counter()
        time.sleep(duration)
        return start, time.perf_counter()

    assert not intervals_overlap(orion.get([timed.remote(0.05) for _ in range(3)]))


@pytest.mark.timeout(30)
def test_unavailable_resource_errors_at_get_instead_of_hanging(make_cluster):
    make_cluster(num_workers=2, resources={"GPU": 1})
    missing = square.options(resources={"TPU": 1}).remote(2)
    too_many = square.options(resources={"GPU": 2}).remote(2)
    with pytest.raises(orion.OrionError, match="TPU"):
        orion.get(missing)
    with pytest.raises(orion.OrionError, match="GPU"):
        orion.get(too_many)
    assert orion.get(square.options(resources={"GPU": 1}).remote(3)) == 9


def test_cluster_and_available_resources(make_cluster, tmp_path):
    make_cluster(num_workers=2, resources={"GPU": 1, "mem": 4})
    total = orion.cluster_resources()
    assert total["CPU"] == 2 and total["GPU"] == 1 and total["mem"] == 4
    wait_until(lambda: orion.available_resources() == total)
    gate, started = tmp_path / "gate", tmp_path / "started"
    ref = blocker.options(resources={"GPU": 1, "mem": 3}).remote(str(gate), str(started))
    wait_until(started.exists)

    def in_use():
        free = orion.available_resources()
        return free["CPU"] == 1 and free.get("GPU", 0) == 0 and free["mem"] == 1

    wait_until(in_use)
    assert orion.cluster_resources() == total  # totals do not change
    touch(gate)
    orion.get(ref)
    wait_until(lambda: orion.available_resources() == total)


def test_resources_always_include_cpu(cluster):
    assert orion.cluster_resources()["CPU"] == 2
    assert "CPU" in orion.available_resources()


# --------------------------------------------------- max_retries / retry_exceptions
def test_retry_exceptions_true_retries_until_success(cluster, tmp_path):
    counter = tmp_path / "count"
    ref = flaky.options(retry_exceptions=True, max_retries=3).remote(str(counter), 2)
    assert orion.get(ref) == 3
    assert read_counter(counter) == 3


def test_retry_exceptions_class_list_retries_matching(cluster, tmp_path):
    counter = tmp_path / "count"
    ref = flaky.options(retry_exceptions=[KeyError, ValueError]).remote(str(counter), 2)
    assert orion.get(ref) == 3


def test_retry_exceptions_matches_subclasses(cluster, tmp_path):
    counter = tmp_path / "count"
    ref = flaky.options(retry_exceptions=[LookupError]).remote(str(counter), 1, KeyError)
    assert orion.get(ref) == 2


def test_retry_exceptions_non_matching_list_fails_at_once(cluster, tmp_path):
    counter = tmp_path / "count"
    ref = flaky.options(retry_exceptions=[KeyError], max_retries=5).remote(str(counter), 2)
    with pytest.raises(ValueError, match="attempt 1"):
        orion.get(ref)
    assert read_counter(counter) == 1


def test_exceptions_not_retried_by_default(cluster, tmp_path):
    counter = tmp_path / "count"
    with pytest.raises(ValueError, match="attempt 1"):
        orion.get(flaky.remote(str(counter), 2))  # max_retries defaults to 3, but only for crashes
    assert read_counter(counter) == 1


def test_retries_used_up_raise_the_last_error(cluster, tmp_path):
    counter = tmp_path / "count"
    ref = flaky.options(retry_exceptions=True, max_retries=2).remote(str(counter), 100)
    with pytest.raises(ValueError, match="attempt 3") as info:
        orion.get(ref)
    assert isinstance(info.value, orion.TaskError)
    assert "attempt 1" not in str(info.value)
    assert read_counter(counter) == 3


def test_max_retries_zero_runs_once(cluster, tmp_path):
    counter = tmp_path / "count"
    with pytest.raises(ValueError):
        orion.get(flaky.options(retry_exceptions=True, max_retries=0).remote(str(counter), 1))
    assert read_counter(counter) == 1


def test_retry_exceptions_in_decorator(cluster, tmp_path):
    @orion.remote(retry_exceptions=[ValueError], max_retries=1)
    def once_flaky(counter):
        if bump_counter(counter) == 1:
            raise ValueError("first")
        return "second"

    assert orion.get(once_flaky.remote(str(tmp_path / "c"))) == "second"


@pytest.mark.timeout(60)
def test_max_retries_reruns_after_worker_process_dies(cluster, needs_processes, tmp_path):
    counter = tmp_path / "count"
    assert orion.get(exit_process.options(max_retries=2).remote(str(counter), 2)) == 3
    # default max_retries is 3
    counter2 = tmp_path / "count2"
    assert orion.get(exit_process.remote(str(counter2), 3)) == 4
    # the cluster replaced its dead workers
    assert orion.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]


# ----------------------------------------------------------------- num_returns
def test_num_returns_splits_result(cluster):
    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert all(isinstance(r, orion.ObjectRef) for r in refs)
    assert len({r.id for r in refs}) == 3
    assert orion.get(refs) == [1, 2, 3]
    assert orion.get(refs[2]) == 3


def test_num_returns_accepts_any_iterable(cluster):
    @orion.remote(num_returns=4)
    def gen(n):
        return (i * 10 for i in range(n))

    assert orion.get(gen.remote(4)) == [0, 10, 20, 30]


def test_num_returns_refs_feed_other_tasks(cluster):
    a, b, c = three.remote()
    assert orion.get(add.remote(a, y=c)) == 4
    assert orion.get(square.remote(b)) == 4


def test_num_returns_one_keeps_tuple_whole(cluster):
    ref = identity.options(num_returns=1).remote((1, 2))
    assert isinstance(ref, orion.ObjectRef)
    assert orion.get(ref) == (1, 2)


def test_num_returns_via_options(cluster):
    refs = identity.options(num_returns=2).remote(["x", "y"])
    assert orion.get(refs) == ["x", "y"]


def test_num_returns_wrong_count_errors(cluster):
    refs = identity.options(num_returns=3, name="short").remote((1, 2))
    for ref in refs:
        with pytest.raises(orion.OrionError, match="num_returns"):
            orion.get(ref)
    refs = identity.options(num_returns=2).remote(5)  # not iterable
    with pytest.raises(orion.OrionError):
        orion.get(refs[0])
    assert orion.get(identity.remote(1)) == 1


def test_num_returns_below_one_raises_value_error_at_call():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_returns"):
            identity.options(num_returns=bad)
        with pytest.raises(ValueError, match="num_returns"):
            orion.remote(num_returns=bad)


# ------------------------------------------------------------------------ name
def test_name_appears_in_error_message(cluster):
    with pytest.raises(orion.TaskError, match="my-special-task"):
        orion.get(fail.options(name="my-special-task").remote())


def test_default_name_is_function_name(cluster):
    with pytest.raises(orion.TaskError, match="fail"):
        orion.get(fail.remote())


def test_name_appears_in_unschedulable_error(cluster):
    with pytest.raises(orion.OrionError, match="greedy-task"):
        orion.get(square.options(num_cpus=64, name="greedy-task").remote(1))


# ---------------------------------------------------------- ObjectRef arguments
def test_ref_positional_argument_is_resolved(cluster):
    assert orion.get(square.remote(square.remote(3))) == 81


def test_ref_keyword_argument_is_resolved(cluster):
    assert orion.get(add.remote(1, y=square.remote(3))) == 10
    assert orion.get(add.remote(x=orion.put(2), y=square.remote(3))) == 11


def test_same_ref_twice_as_argument(cluster):
    r = square.remote(3)
    assert orion.get(add.remote(r, r)) == 18
    assert orion.get(add.remote(r, y=r)) == 18


def test_dependent_runs_only_after_dependency_is_ready(cluster, tmp_path):
    gate, marker = tmp_path / "gate", tmp_path / "marker"
    upstream = gated_writer.remote(str(gate), str(marker), 5)
    downstream = check_ran_after.remote(upstream, str(marker))
    ready, not_ready = orion.wait([downstream], timeout=0.2)
    assert ready == [] and not_ready == [downstream]
    touch(gate)
    assert orion.get(downstream) == (5, True)


def test_keyword_dependency_waits_too(cluster, tmp_path):
    gate, marker = tmp_path / "gate", tmp_path / "marker"
    upstream = gated_writer.remote(str(gate), str(marker), 6)
    downstream = check_ran_after.remote(value=upstream, marker=str(marker))
    touch(gate)
    assert orion.get(downstream) == (6, True)


@pytest.mark.parametrize("kind", ["list", "tuple", "dict"])
def test_refs_nested_in_containers_are_passed_as_refs(cluster, kind):
    refs = [square.remote(2), orion.put(5)]
    container = {"list": list, "tuple": tuple, "dict": lambda r: {"a": r[0], "b": r[1]}}[kind](refs)
    types, values = orion.get(inspect_container.remote(container))
    assert types == ["ObjectRef", "ObjectRef"]
    assert values == [4, 5]


def test_ref_in_list_is_not_a_dependency(cluster, tmp_path):
    # A nested ref does not delay the task: it starts while the ref is pending.
    gate, started = tmp_path / "gate", tmp_path / "started"
    pending = blocker.remote(str(gate))
    holder = get_inside.remote([pending], str(started))
    wait_until(started.exists)
    touch(gate)
    assert orion.get(holder) == "released"


# ----------------------------------------------------------------------- get
def test_get_single_and_list(cluster):
    refs = [square.remote(i) for i in range(20)]
    assert orion.get(refs[3]) == 9
    assert orion.get(refs) == [i * i for i in range(20)]
    assert orion.get([]) == []
    assert orion.get([refs[1], refs[1]]) == [1, 1]


def test_get_keeps_order_when_completion_order_differs(cluster, tmp_path):
    gate = tmp_path / "gate"
    slow = blocker.remote(str(gate), result="slow")
    fast = identity.remote("fast")
    assert orion.get(fast) == "fast"
    touch(gate)
    assert orion.get([slow, fast]) == ["slow", "fast"]


@orion.remote
def fail_after(gate, message):
    if gate is not None:
        wait_for_file(gate)
    raise ValueError(message)


def test_get_list_raises_the_first_failure_in_list_order_once_all_are_in(cluster, tmp_path):
    # A driver's get decodes values as they arrive (Client._get_in_order), but
    # what it raises, and when, is as if it had waited for all of them.
    gate = tmp_path / "gate"
    slow_failure = fail_after.remote(str(gate), "first in the list")
    fast_failure = fail_after.remote(None, "second in the list")
    slow_value = blocker.remote(str(tmp_path / "gate2"))
    with pytest.raises(orion.GetTimeoutError):  # a failure is in, the rest are not: still a timeout
        orion.get([fast_failure, slow_value], timeout=0.3)
    touch(gate)
    with pytest.raises(ValueError, match="first in the list"):
        orion.get([identity.remote(1), slow_failure, fast_failure])
    touch(tmp_path / "gate2")
    with pytest.raises(ValueError, match="second in the list"):
        orion.get([slow_value, fast_failure, slow_value])
    assert orion.get([slow_value, identity.remote(2)]) == ["released", 2]


def test_get_timeout_raises_get_timeout_error_then_retry_works(cluster, tmp_path):
    gate = tmp_path / "gate"
    ref = blocker.remote(str(gate))
    start = time.monotonic()
    with pytest.raises(orion.GetTimeoutError) as info:
        orion.get(ref, timeout=0.2)
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 5
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, orion.OrionError)
    with pytest.raises(TimeoutError):  # a list times out too, and plain TimeoutError catches it
        orion.get([identity.remote(1), ref], timeout=0.05)
    touch(gate)
    assert orion.get(ref, timeout=20) == "released"


def test_get_timeout_zero(cluster, tmp_path):
    done = orion.put(1)
    assert orion.get(done, timeout=0) == 1
    ref = blocker.remote(str(tmp_path / "gate"))
    with pytest.raises(orion.GetTimeoutError):
        orion.get(ref, timeout=0)
    touch(tmp_path / "gate")
    orion.get(ref)


def test_get_negative_timeout_raises_value_error(cluster):
    ref = orion.put(1)
    with pytest.raises(ValueError):
        orion.get(ref, timeout=-1)


def test_many_driver_threads_submit_and_get_at_once(cluster):
    # Every thread's submits and gets go through the head (on the embedded
    # cluster each sends its own dispatches on the head's socket, under its
    # lock, while the head thread receives): nothing may be lost or hang.
    def run(offset):
        results = []
        for round_ in range(30):
            refs = [square.remote(offset + round_ * 10 + i) for i in range(10)]
            total = add.remote(refs[0], 0)
            for ref in refs[1:]:
                total = add.remote(total, ref)
            results.append(orion.get(total) == sum(orion.get(refs)))
            results.append(orion.get(identity.remote(offset)) == offset)
        return all(results)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(run, [0, 1000, 2000, 3000], timeout=120))
    assert outcomes == [True] * 4


def test_get_blocks_without_busy_waiting(cluster):
    @orion.remote
    def sleeper():
        time.sleep(0.6)
        return "awake"

    ref = sleeper.remote()
    cpu_before = time.process_time()
    wall_before = time.monotonic()
    assert orion.get(ref) == "awake"
    wall = time.monotonic() - wall_before
    cpu = time.process_time() - cpu_before
    assert wall > 0.3
    assert cpu < 0.5 * wall, f"get used {cpu:.2f} s of CPU in {wall:.2f} s"


@pytest.mark.timeout(60)
def test_get_inside_task_recursive_fibonacci(cluster):
    assert orion.get(fib.remote(12)) == 144


@pytest.mark.timeout(30)
def test_get_inside_task_on_single_worker(make_cluster):
    make_cluster(num_workers=1)
    assert orion.get(nested_sum.remote(15)) == 15
    assert orion.get(fib.remote(6)) == 8


def test_get_inside_task_of_put_value(cluster):
    ref = orion.put({"k": 3})

    @orion.remote
    def reader(holder):
        return orion.get(holder[0])["k"] + 1

    assert orion.get(reader.remote([ref])) == 4


# ----------------------------------------------------------------------- wait
def test_wait_keeps_input_order(cluster, tmp_path):
    gate = tmp_path / "gate"
    slow = blocker.remote(str(gate))
    fast = [identity.remote(i) for i in range(3)]
    orion.get(fast)
    refs = [fast[2], slow, fast[0], fast[1]]
    ready, not_ready = orion.wait(refs, num_returns=3, timeout=10)
    assert ready == [fast[2], fast[0], fast[1]]
    assert not_ready == [slow]
    touch(gate)
    ready, not_ready = orion.wait(refs, num_returns=4, timeout=20)
    assert ready == refs and not_ready == []


def test_wait_num_returns_caps_ready(cluster):
    refs = [identity.remote(i) for i in range(5)]
    orion.get(refs)
    ready, not_ready = orion.wait(refs, num_returns=2)
    assert ready == refs[:2]
    assert not_ready == refs[2:]
    ready, not_ready = orion.wait(refs)
    assert ready == refs[:1] and not_ready == refs[1:]


def test_wait_default_returns_first_ready(cluster, tmp_path):
    gate = tmp_path / "gate"
    slow = blocker.remote(str(gate))
    fast = identity.remote("x")
    ready, not_ready = orion.wait([slow, fast], timeout=20)
    assert ready == [fast] and not_ready == [slow]
    touch(gate)
    orion.get(slow)


def test_wait_timeout(cluster, tmp_path):
    gate = tmp_path / "gate"
    slow = blocker.remote(str(gate))
    done = orion.put(1)
    start = time.monotonic()
    assert orion.wait([slow], timeout=0.1) == ([], [slow])
    assert orion.wait([slow, done], num_returns=2, timeout=0.1) == ([done], [slow])
    assert orion.wait([slow], timeout=0) == ([], [slow])
    assert time.monotonic() - start < 5
    touch(gate)
    assert orion.wait([slow], timeout=20) == ([slow], [])


def test_wait_counts_failed_and_cancelled_as_ready(cluster, tmp_path):
    failed = fail.remote()
    ready, not_ready = orion.wait([failed], timeout=20)
    assert ready == [failed] and not_ready == []
    gate = tmp_path / "gate"
    victim = blocker.remote(str(gate))
    orion.cancel(victim)
    ready, _ = orion.wait([victim, failed], num_returns=2, timeout=20)
    assert ready == [victim, failed]


def test_wait_num_returns_larger_than_refs_raises_value_error(cluster):
    refs = [orion.put(1), orion.put(2)]
    with pytest.raises(ValueError):
        orion.wait(refs, num_returns=3)


def test_wait_negative_timeout_raises_value_error(cluster):
    with pytest.raises(ValueError):
        orion.wait([orion.put(1)], timeout=-0.5)


# ------------------------------------------------------------------------ put
def test_put_and_get(cluster):
    for value in [1, "text", None, {"a": [1, 2]}, (1, 2.5), b"\x00" * 10]:
        ref = orion.put(value)
        assert isinstance(ref, orion.ObjectRef)
        assert orion.get(ref) == value


def test_put_large_value(cluster):
    value = os.urandom(8 * 1024 * 1024)
    ref = orion.put(value)
    assert orion.get(ref) == value
    assert orion.get(identity.remote(ref)) == value


def test_put_ref_as_task_argument(cluster):
    ref = orion.put(7)
    assert orion.get(square.remote(ref)) == 49
    assert orion.get(add.remote(1, y=ref)) == 8


def test_put_same_value_gives_distinct_refs(cluster):
    a, b = orion.put(1), orion.put(1)
    assert a != b and a.id != b.id


def test_put_inside_task(cluster):
    ref = orion.get(make_put_ref.remote([1, 2, 3]))
    assert isinstance(ref, orion.ObjectRef)
    assert orion.get(ref) == [1, 2, 3]


# ---------------------------------------------------------------------- cancel
@pytest.mark.timeout(30)
def test_cancel_pending_task_never_runs(cluster, tmp_path):
    gate = tmp_path / "gate"
    started = [tmp_path / "s1", tmp_path / "s2"]
    busy = [blocker.remote(str(gate), str(s)) for s in started]
    for s in started:
        wait_until(s.exists)  # both workers are busy: the next task queues
    marker = tmp_path / "victim-ran"
    victim = write_marker.remote(str(marker))
    orion.cancel(victim)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(victim, timeout=20)
    touch(gate)
    assert orion.get(busy) == ["released", "released"]
    # Tasks queued after the victim have run on both workers; it never did.
    orion.get([identity.remote(i) for i in range(8)])
    assert not marker.exists()


@pytest.mark.timeout(30)
def test_cancel_task_waiting_for_dependency_never_runs(cluster, tmp_path):
    gate, marker = tmp_path / "gate", tmp_path / "ran"
    upstream = blocker.remote(str(gate))
    victim = write_marker.remote(str(marker), upstream)
    orion.cancel(victim)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(victim, timeout=20)
    touch(gate)
    assert orion.get(upstream) == "released"
    orion.get([identity.remote(i) for i in range(4)])
    assert not marker.exists()


@pytest.mark.timeout(30)
def test_cancel_running_task_raises_keyboard_interrupt_in_it(cluster, tmp_path):
    started, interrupted = tmp_path / "started", tmp_path / "interrupted"
    ref = interruptible.remote(str(started), str(interrupted))
    wait_until(started.exists)
    orion.cancel(ref)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(ref, timeout=20)
    wait_until(interrupted.exists)
    # Both workers are usable afterwards.
    names = ["a", "b"]
    assert orion.get([rendezvous.remote(str(tmp_path), n, names) for n in names]) == names


@pytest.mark.timeout(30)
def test_cancel_task_blocked_in_get(cluster, tmp_path):
    gate, started, interrupted = tmp_path / "gate", tmp_path / "started", tmp_path / "interrupted"
    pending = blocker.remote(str(gate))
    ref = get_inside.remote([pending], str(started), str(interrupted))
    wait_until(started.exists)
    orion.cancel(ref)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(ref, timeout=20)
    wait_until(interrupted.exists)
    touch(gate)
    assert orion.get(pending) == "released"


@pytest.mark.timeout(30)
def test_cancel_task_that_swallows_interrupt_is_still_cancelled(cluster, tmp_path):
    started, stop = tmp_path / "started", tmp_path / "stop"
    ref = stubborn.remote(str(started), str(stop))
    try:
        wait_until(started.exists)
        orion.cancel(ref)
        touch(stop)  # it returns normally; the cancel still wins
        with pytest.raises(orion.TaskCancelledError):
            orion.get(ref, timeout=20)
    finally:
        touch(stop)


@pytest.mark.timeout(30)
def test_cancel_force_kills_the_task(cluster, tmp_path):
    started, stop = tmp_path / "started", tmp_path / "stop"
    ref = stubborn.remote(str(started), str(stop))
    try:
        wait_until(started.exists)
        orion.cancel(ref, force=True)
        with pytest.raises(orion.TaskCancelledError):
            orion.get(ref, timeout=20)  # without waiting for the task to give up
        # Its worker was replaced: two tasks still run at once.
        names = ["a", "b"]
        assert orion.get([rendezvous.remote(str(tmp_path), n, names) for n in names]) == names
        assert _cpu(orion.cluster_resources()) == 2
        wait_until(lambda: orion.available_resources()["CPU"] == 2)
    finally:
        touch(stop)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("force", [False, True])
def test_cancelled_task_is_not_retried(cluster, tmp_path, force):
    counter, started = tmp_path / "count", tmp_path / "started"
    ref = counted.options(max_retries=3, retry_exceptions=True).remote(str(counter), str(started))
    wait_until(started.exists)
    orion.cancel(ref, force=force)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(ref, timeout=20)
    orion.get([identity.remote(i) for i in range(4)])
    assert read_counter(counter) == 1


@pytest.mark.timeout(30)
def test_dependents_of_cancelled_task_raise_task_cancelled_error(cluster, tmp_path):
    gate, marker = tmp_path / "gate", tmp_path / "ran"
    started = tmp_path / "started"
    upstream = blocker.remote(str(gate), str(started))
    child = write_marker.remote(str(marker), upstream)
    grandchild = write_marker.remote(str(marker), y=child)
    wait_until(started.exists)
    orion.cancel(upstream)
    for ref in (upstream, child, grandchild):
        with pytest.raises(orion.TaskCancelledError):
            orion.get(ref, timeout=20)
    late = write_marker.remote(str(marker), upstream)  # submitted after the cancel
    with pytest.raises(orion.TaskCancelledError):
        orion.get(late, timeout=20)
    assert not marker.exists()


def test_cancel_finished_task_does_nothing(cluster):
    ref = square.remote(6)
    assert orion.get(ref) == 36
    orion.cancel(ref)
    orion.cancel(ref, force=True)
    assert orion.get(ref) == 36
    assert orion.get(square.remote(ref)) == 1296
    failed = fail.remote()
    orion.wait([failed], timeout=20)
    orion.cancel(failed)
    with pytest.raises(ValueError, match="boom"):
        orion.get(failed)
    put_ref = orion.put(3)
    orion.cancel(put_ref)
    assert orion.get(put_ref) == 3


@pytest.mark.timeout(30)
def test_cancel_twice_is_safe(cluster, tmp_path):
    gate = tmp_path / "gate"
    ref = blocker.remote(str(gate))
    orion.cancel(ref)
    orion.cancel(ref)
    orion.cancel(ref, force=True)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(ref, timeout=20)
    assert orion.get(square.remote(2)) == 4


# ----------------------------------------------------------------------- nodes
def test_nodes_fields(cluster):
    nodes = orion.nodes()
    assert isinstance(nodes, list) and len(nodes) == 1  # an embedded cluster is one node
    node = nodes[0]
    for key in ("node_id", "address", "alive", "resources", "available", "running"):
        assert key in node, key
    assert isinstance(node["node_id"], str) and node["node_id"]
    assert node["address"] is None or isinstance(node["address"], str)
    assert node["alive"] is True
    assert node["resources"]["CPU"] == 2
    wait_until(lambda: orion.nodes()[0]["available"]["CPU"] == 2 and orion.nodes()[0]["running"] == 0)


def test_nodes_track_running_tasks(cluster, tmp_path):
    gate, started = tmp_path / "gate", tmp_path / "started"
    ref = blocker.remote(str(gate), str(started))
    wait_until(started.exists)

    def busy():
        node = orion.nodes()[0]
        return node["running"] == 1 and node["available"]["CPU"] == 1

    wait_until(busy)
    assert orion.nodes()[0]["resources"]["CPU"] == 2
    touch(gate)
    orion.get(ref)

    def idle():
        node = orion.nodes()[0]
        return node["running"] == 0 and node["available"]["CPU"] == 2

    wait_until(idle)


def test_node_ids_are_stable(cluster):
    assert orion.nodes()[0]["node_id"] == orion.nodes()[0]["node_id"]


# ------------------------------------------------------------------- ObjectRef
def test_object_ref_equal_and_hashable_after_travelling_through_a_task(cluster):
    ref = orion.put("payload")
    (back,) = orion.get(identity.remote([ref]))
    assert isinstance(back, orion.ObjectRef)
    assert back == ref and hash(back) == hash(ref) and back.id == ref.id
    assert {ref: "v"}[back] == "v"
    assert len({ref, back}) == 1
    assert orion.get(back) == "payload"


def test_object_ref_created_in_task_usable_by_driver(cluster):
    child = orion.get(submit_child.remote(9))
    assert isinstance(child, orion.ObjectRef)
    assert orion.get(child) == 81
    assert orion.get(add.remote(child, 1)) == 82


def test_object_ref_id_is_hex_string(cluster):
    refs = [orion.put(1), square.remote(2), *three.remote()]
    for ref in refs:
        assert isinstance(ref.id, str) and ref.id
        assert all(c in string.hexdigits for c in ref.id), ref.id
        int(ref.id, 16)
    assert len({r.id for r in refs}) == len(refs)


def test_object_ref_is_picklable(cluster):
    ref = square.remote(5)
    for module in (pickle, cloudpickle):
        copy = module.loads(module.dumps(ref))
        assert copy == ref and hash(copy) == hash(ref)
        assert orion.get(copy) == 25


def test_object_ref_as_dict_key(cluster):
    refs = [square.remote(i) for i in range(5)]
    table = {ref: i for i, ref in enumerate(refs)}
    for i, ref in enumerate(refs):
        assert table[pickle.loads(pickle.dumps(ref))] == i
    assert orion.put(1) not in table


def test_object_ref_inequality(cluster):
    a, b = orion.put(1), orion.put(1)
    assert a != b
    assert a != a.id  # not equal to its id string
    assert a == a


def test_object_ref_future_with_value(cluster, tmp_path):
    gate = tmp_path / "gate"
    ref = blocker.remote(str(gate))
    future = ref.future()
    assert isinstance(future, concurrent.futures.Future)
    assert not future.done()
    done = threading.Event()
    future.add_done_callback(lambda f: done.set())
    touch(gate)
    assert future.result(timeout=20) == "released"
    assert done.wait(10)
    assert orion.put(5).future().result(timeout=10) == 5


def test_object_ref_future_with_exception(cluster):
    future = fail.remote("future boom").future()
    exc = future.exception(timeout=20)
    assert isinstance(exc, ValueError) and isinstance(exc, orion.TaskError)
    assert "future boom" in str(exc)
    with pytest.raises(ValueError):
        future.result()


def test_object_ref_futures_with_concurrent_wait(cluster):
    futures = [square.remote(i).future() for i in range(10)]
    done, not_done = concurrent.futures.wait(futures, timeout=20)
    assert not not_done
    assert [f.result() for f in futures] == [i * i for i in range(10)]


@pytest.mark.timeout(30)
def test_get_on_ref_after_shutdown_raises_orion_error(transport, tmp_path):
    start_cluster(transport)
    done = square.remote(3)
    assert orion.get(done) == 9
    pending = blocker.remote(str(tmp_path / "gate"))
    orion.shutdown()
    with pytest.raises(orion.OrionError):
        orion.get(done)
    with pytest.raises(orion.OrionError):
        orion.get(pending)


@pytest.mark.timeout(30)
def test_get_on_ref_from_dead_cluster_after_reinit_raises_orion_error(transport, tmp_path):
    start_cluster(transport)
    done = square.remote(3)
    orion.get(done)
    pending = blocker.remote(str(tmp_path / "gate"))
    put_ref = orion.put("old")
    orion.shutdown()
    start_cluster(transport)
    for ref in (done, pending, put_ref):
        with pytest.raises(orion.OrionError, match="cluster"):
            orion.get(ref)  # a clear error, not a hang
        with pytest.raises(orion.OrionError):
            ref.future().result(timeout=20)
    assert orion.get(square.remote(4)) == 16


@pytest.mark.timeout(30)
def test_ref_from_dead_cluster_as_argument_fails_the_task(transport, tmp_path):
    start_cluster(transport)
    old = orion.put(1)
    orion.shutdown()
    start_cluster(transport)
    marker = tmp_path / "ran"
    with pytest.raises(orion.OrionError):
        orion.get(write_marker.remote(str(marker), old))
    assert not marker.exists()


# ------------------------------------------------------------- not initialized
def test_api_calls_before_init_raise_orion_error(tmp_path):
    ref = orion.ObjectRef("00" * 10)
    with pytest.raises(orion.OrionError):
        square.remote(1)
    with pytest.raises(orion.OrionError):
        orion.put(1)
    with pytest.raises(orion.OrionError):
        orion.get(ref)
    with pytest.raises(orion.OrionError):
        orion.wait([ref])
    with pytest.raises(orion.OrionError):
        orion.cancel(ref)
    with pytest.raises(orion.OrionError):
        orion.nodes()
    with pytest.raises(orion.OrionError):
        orion.cluster_resources()
    with pytest.raises(orion.OrionError):
        orion.available_resources()


def test_a_function_counts_as_sent_only_once_a_submit_carrying_it_is_out(needs_processes, cluster):
    """Two threads submitting a function's first tasks at once: the one that
    does not carry the pickled function must not reach the head first. So
    every submit carries it until one that does has gone (an earlier version
    marked it sent before the carrying submit went: the other thread's task
    named a function the head did not have, and its dispatch was lost)."""
    client = _current_client()

    @orion.remote
    def fresh():
        return 1

    first, second = client._new_functions(fresh), client._new_functions(fresh)
    assert first and second and first[0][0] == second[0][0]
    client._functions_sent(first)
    assert client._new_functions(fresh) == []
