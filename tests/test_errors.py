"""The Errors table of /work/shared/API.md, row by row, on every transport."""
from __future__ import annotations

import os
import pickle
import threading

import pytest

import orion
from conftest import bump_counter, read_counter, start_cluster, touch, wait_for_file, wait_until

ALL_ERRORS = ["TaskError", "GetTimeoutError", "TaskCancelledError", "WorkerCrashedError", "ObjectLostError"]


# ------------------------------------------------------------ exception classes
class CustomError(Exception):
    """Its __init__ takes two required arguments and keeps an attribute."""

    def __init__(self, code, detail):
        super().__init__(f"code {code}: {detail}")
        self.code = code


class NeedsArgsInNew(Exception):
    def __new__(cls, a, b):
        self = super().__new__(cls, a, b)
        self.total = a + b
        return self


class FinalError(Exception):
    """Cannot be subclassed: TaskError cannot mix it in."""

    def __init_subclass__(cls, **kwargs):
        raise TypeError("FinalError cannot be subclassed")


class FinalErrorOtherWay(Exception):
    def __init_subclass__(cls, **kwargs):
        raise RuntimeError("no subclasses of FinalErrorOtherWay, please")


class HoldsLock(Exception):
    """Carries an attribute that cannot be pickled."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


# ------------------------------------------------------------ remote functions
@orion.remote
def raise_value_error(message="boom"):
    raise ValueError(message)


@orion.remote
def raise_instance(exc):
    raise exc


@orion.remote
def raise_custom():
    raise CustomError(42, "custom detail")


@orion.remote
def raise_needs_args():
    raise NeedsArgsInNew(2, 3)


@orion.remote
def raise_final():
    raise FinalError("final detail")


@orion.remote
def raise_final_other():
    raise FinalErrorOtherWay("other final detail")


@orion.remote
def raise_holds_lock():
    raise HoldsLock("lock detail")


@orion.remote
def raise_key_error():
    return {}["missing-key"]


@orion.remote
def call_sys_exit():
    raise SystemExit(3)


@orion.remote
def marker_then_value(marker, *args, **kwargs):
    touch(marker)
    return "ran"


@orion.remote
def get_and_reraise(holder):
    return orion.get(holder[0])


@orion.remote
def get_and_catch(holder):
    try:
        orion.get(holder[0])
    except ValueError as exc:
        return f"caught {type(exc.cause).__name__}: {exc.cause}"
    return "no error"


@orion.remote
def blocker(gate, started=None):
    if started is not None:
        touch(started)
    wait_for_file(gate)
    return "released"


@orion.remote
def identity(x):
    return x


@orion.remote
def exit_process(counter=None):
    if counter is not None:
        bump_counter(counter)
    os._exit(13)


# ----------------------------------------------------------------- the classes
@pytest.mark.parametrize("name", ALL_ERRORS + ["OrionError", "UnschedulableError"])
def test_errors_importable_from_orion_and_derive_from_orion_error(name):
    cls = getattr(orion, name)
    assert isinstance(cls, type) and issubclass(cls, Exception)
    assert issubclass(cls, orion.OrionError)
    assert name in orion.__all__


def test_get_timeout_error_is_a_timeout_error():
    assert issubclass(orion.GetTimeoutError, TimeoutError)
    assert issubclass(orion.GetTimeoutError, orion.OrionError)


# ------------------------------------------------------------------- TaskError
def test_task_error_is_instance_of_original_class(cluster):
    with pytest.raises(orion.TaskError) as info:
        orion.get(raise_value_error.remote("boom"))
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, orion.TaskError)
    assert isinstance(err, orion.OrionError)
    assert type(err.cause) is ValueError
    assert err.cause.args == ("boom",)


def test_except_original_class_still_works(cluster):
    try:
        orion.get(raise_value_error.remote("caught"))
    except ValueError as exc:
        assert "caught" in str(exc)
    else:
        pytest.fail("get did not raise")


def test_task_error_message_holds_remote_traceback(cluster):
    with pytest.raises(orion.TaskError) as info:
        orion.get(raise_value_error.remote("traceback please"))
    message = str(info.value)
    assert "traceback please" in message
    assert "Traceback" in message
    assert "raise_value_error" in message  # the remote frame's function name
    assert 'raise ValueError(message)' in message  # ... and its source line


def test_task_error_for_builtin_subclasses(cluster):
    with pytest.raises(KeyError) as info:
        orion.get(raise_key_error.remote())
    assert isinstance(info.value, orion.TaskError)
    assert "missing-key" in str(info.value)
    for exc in (ZeroDivisionError("zero"), OSError(2, "no such file"), RuntimeError("rt"),
                StopIteration("stop"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte")):
        with pytest.raises(type(exc)) as info:
            orion.get(raise_instance.remote(exc))
        assert isinstance(info.value, orion.TaskError)
        assert type(info.value.cause) is type(exc)


def test_task_error_with_custom_init_signature(cluster):
    with pytest.raises(CustomError) as info:
        orion.get(raise_custom.remote())
    err = info.value
    assert isinstance(err, orion.TaskError)
    assert isinstance(err.cause, CustomError) and err.cause.code == 42
    assert err.code == 42  # the cause's attributes are reachable on the error
    assert "custom detail" in str(err)


def test_task_error_with_custom_init_signature_through_nested_get(cluster):
    failed = raise_custom.remote()
    with pytest.raises(CustomError) as info:
        orion.get(get_and_reraise.remote([failed]))
    assert isinstance(info.value, orion.TaskError)
    assert info.value.code == 42
    assert "custom detail" in str(info.value)


def test_task_error_with_custom_new_signature(cluster):
    with pytest.raises(orion.TaskError) as info:
        orion.get(raise_needs_args.remote())
    err = info.value
    assert isinstance(err.cause, NeedsArgsInNew) and err.cause.total == 5
    assert "NeedsArgsInNew" in str(err)


@pytest.mark.parametrize("task, cls, text", [
    (raise_final, FinalError, "final detail"),
    (raise_final_other, FinalErrorOtherWay, "other final detail"),
])
def test_non_subclassable_exception_still_yields_task_error(cluster, task, cls, text):
    with pytest.raises(orion.TaskError) as info:
        orion.get(task.remote())
    err = info.value
    assert type(err.cause) is cls
    assert text in str(err)
    assert "Traceback" in str(err)


def test_exception_with_unpicklable_attribute_yields_task_error(cluster):
    with pytest.raises(orion.TaskError) as info:
        orion.get(raise_holds_lock.remote())
    assert "lock detail" in str(info.value)
    assert "HoldsLock" in str(info.value)


def test_system_exit_in_task_is_a_task_error(cluster):
    with pytest.raises(orion.TaskError) as info:
        orion.get(call_sys_exit.remote())
    assert isinstance(info.value.cause, SystemExit)
    assert orion.get(identity.remote(1)) == 1  # the worker survived


def test_task_error_is_picklable(cluster):
    with pytest.raises(orion.TaskError) as info:
        orion.get(raise_value_error.remote("pickle me"))
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, orion.TaskError) and isinstance(copy, ValueError)
    assert str(copy) == str(info.value)


def test_task_error_through_nested_get(cluster):
    failed = raise_value_error.remote("inner boom")
    with pytest.raises(ValueError, match="inner boom") as info:
        orion.get(get_and_reraise.remote([failed]))
    assert isinstance(info.value, orion.TaskError)
    assert orion.get(get_and_catch.remote([failed])) == "caught ValueError: inner boom"


def test_downstream_of_failed_task_fails_with_same_error_without_running(cluster, tmp_path):
    marker = tmp_path / "ran"
    root = raise_value_error.remote("root cause")
    child = marker_then_value.remote(str(marker), root)
    grandchild = marker_then_value.remote(str(marker), x=child)
    mixed = marker_then_value.remote(str(marker), orion.put(1), root)
    with pytest.raises(ValueError) as root_info:
        orion.get(root)
    for ref in (child, grandchild, mixed):
        with pytest.raises(ValueError) as info:
            orion.get(ref)
        assert isinstance(info.value, orion.TaskError)
        assert str(info.value) == str(root_info.value)
        assert type(info.value.cause) is ValueError and info.value.cause.args == ("root cause",)
    late = marker_then_value.remote(str(marker), root)  # submitted after the failure is known
    with pytest.raises(ValueError, match="root cause"):
        orion.get(late)
    assert not marker.exists()


def test_downstream_of_failed_task_via_wait(cluster, tmp_path):
    marker = tmp_path / "ran"
    refs = [raise_value_error.remote("x")]
    for _ in range(5):
        refs.append(marker_then_value.remote(str(marker), refs[-1]))
    ready, not_ready = orion.wait(refs, num_returns=len(refs), timeout=20)
    assert ready == refs and not_ready == []
    assert not marker.exists()


# ------------------------------------------------------------- GetTimeoutError
def test_get_timeout_error(cluster, tmp_path):
    gate = tmp_path / "gate"
    ref = blocker.remote(str(gate))
    with pytest.raises(orion.GetTimeoutError) as info:
        orion.get(ref, timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert "timed out" in str(info.value)
    try:
        orion.get(ref, timeout=0.01)
    except TimeoutError:
        pass
    else:
        pytest.fail("no timeout")
    touch(gate)
    assert orion.get(ref) == "released"


# ---------------------------------------------------------- TaskCancelledError
@pytest.mark.timeout(30)
def test_task_cancelled_error(cluster, tmp_path):
    gate, started, marker = tmp_path / "gate", tmp_path / "started", tmp_path / "ran"
    running = blocker.remote(str(gate), str(started))
    wait_until(started.exists)
    dependent = marker_then_value.remote(str(marker), running)
    orion.cancel(running)
    with pytest.raises(orion.TaskCancelledError) as info:
        orion.get(running, timeout=20)
    assert isinstance(info.value, orion.OrionError)
    assert "cancel" in str(info.value)
    with pytest.raises(orion.TaskCancelledError):
        orion.get(dependent, timeout=20)
    assert not marker.exists()


# ---------------------------------------------------------- WorkerCrashedError
@pytest.mark.timeout(60)
def test_worker_crashed_error_after_retries_used_up(cluster, needs_processes, tmp_path):
    counter = tmp_path / "count"
    with pytest.raises(orion.WorkerCrashedError) as info:
        orion.get(exit_process.options(max_retries=1, name="crasher").remote(str(counter)), timeout=30)
    assert isinstance(info.value, orion.OrionError)
    assert "crasher" in str(info.value)
    assert read_counter(counter) == 2  # the first run plus one retry
    assert orion.get(identity.remote(5)) == 5  # the dead worker was replaced


@pytest.mark.timeout(60)
def test_worker_crashed_error_without_retries(cluster, needs_processes, tmp_path):
    counter = tmp_path / "count"
    with pytest.raises(orion.WorkerCrashedError):
        orion.get(exit_process.options(max_retries=0).remote(str(counter)), timeout=30)
    assert read_counter(counter) == 1


@pytest.mark.timeout(60)
def test_downstream_of_crashed_task_fails_without_running(cluster, needs_processes, tmp_path):
    marker = tmp_path / "ran"
    crashed = exit_process.options(max_retries=0).remote()
    child = marker_then_value.remote(str(marker), crashed)
    with pytest.raises(orion.WorkerCrashedError) as root_info:
        orion.get(crashed, timeout=30)
    with pytest.raises(orion.WorkerCrashedError) as info:
        orion.get(child, timeout=30)
    assert str(info.value) == str(root_info.value)
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_crash_is_not_retried_by_retry_exceptions_alone(cluster, needs_processes, tmp_path):
    counter = tmp_path / "count"
    with pytest.raises(orion.WorkerCrashedError):
        orion.get(exit_process.options(max_retries=0, retry_exceptions=True).remote(str(counter)), timeout=30)
    assert read_counter(counter) == 1


# ------------------------------------------------------------- ObjectLostError
@pytest.mark.timeout(30)
def test_object_lost_error_for_object_of_a_dead_cluster(transport, tmp_path):
    start_cluster(transport)
    old_value = orion.put("lost with its cluster")
    old_task = identity.remote(1)
    orion.get(old_task)
    orion.shutdown()
    start_cluster(transport)
    for ref in (old_value, old_task):
        with pytest.raises(orion.ObjectLostError) as info:
            orion.get(ref)
        assert isinstance(info.value, orion.OrionError)
        assert ref.id in str(info.value)
    marker = tmp_path / "ran"
    dependent = marker_then_value.remote(str(marker), old_value)
    with pytest.raises(orion.ObjectLostError):
        orion.get(dependent)
    assert not marker.exists()


# --------------------------------------------------------- UnschedulableError
@pytest.mark.timeout(30)
def test_unschedulable_error(cluster, tmp_path):
    marker = tmp_path / "ran"
    impossible = identity.options(resources={"unicorn": 1}).remote(1)
    dependent = marker_then_value.remote(str(marker), impossible)
    with pytest.raises(orion.UnschedulableError, match="unicorn") as info:
        orion.get(impossible)
    assert isinstance(info.value, orion.OrionError)
    with pytest.raises(orion.UnschedulableError):
        orion.get(dependent)
    assert not marker.exists()
