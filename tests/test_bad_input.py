"""Bad input gets a clear error at the call, not a hang later (API.md, last Errors paragraph)."""
from __future__ import annotations

import threading

import pytest

import orion
from conftest import start_cluster


@orion.remote
def identity(*args, **kwargs):
    return args, kwargs


@orion.remote
def square(x):
    return x * x


def _lock():
    return threading.Lock()


# --------------------------------------------------------- non-callable remote
@pytest.mark.parametrize("thing", [42, "a string", None, [1, 2], {"a": 1}])
def test_remote_of_non_callable_raises_type_error(thing):
    with pytest.raises(TypeError):
        orion.remote(thing)
    with pytest.raises(TypeError):
        orion.remote(num_cpus=1)(thing)


def test_remote_with_function_and_options_positionally():
    with pytest.raises(TypeError):
        orion.remote(lambda: 1, lambda: 2)


# -------------------------------------------------------------- unknown option
@pytest.mark.parametrize("option", ["num_gpus_typo", "memory_mb", "retries", "timeout"])
def test_unknown_option_raises_at_the_call(option):
    with pytest.raises(ValueError, match=option):
        orion.remote(**{option: 1})
    with pytest.raises(ValueError, match=option):
        square.options(**{option: 1})


@pytest.mark.parametrize("option, value", [
    ("num_cpus", -1),
    ("num_cpus", "2"),
    ("num_cpus", True),
    ("resources", ["GPU"]),
    ("resources", {"GPU": -1}),
    ("resources", {"GPU": "one"}),
    ("resources", {"CPU": 1}),
    ("max_retries", -2),
    ("max_retries", 1.5),
    ("max_retries", "3"),
    ("retry_exceptions", "yes"),
    ("retry_exceptions", [42]),
    ("retry_exceptions", [ValueError, "KeyError"]),
    ("num_returns", 0),
    ("num_returns", -1),
    ("num_returns", 1.5),
    ("num_returns", True),
    ("name", 42),
])
def test_bad_option_value_raises_at_the_call(option, value):
    with pytest.raises(ValueError, match=option):
        orion.remote(**{option: value})
    with pytest.raises(ValueError, match=option):
        square.options(**{option: value})


def test_good_option_values_are_accepted():
    square.options(num_cpus=0.5, resources={"GPU": 1}, max_retries=0, retry_exceptions=[ValueError],
                   num_returns=2, name="ok")
    square.options(num_cpus=2, resources={}, max_retries=-1, retry_exceptions=(KeyError,), name=None)
    square.options(retry_exceptions=True)


# ------------------------------------------------------------------ num_returns
@pytest.mark.parametrize("bad", [0, -1, -100])
def test_num_returns_below_one_raises_value_error(bad):
    with pytest.raises(ValueError, match="num_returns"):
        square.options(num_returns=bad)

    with pytest.raises(ValueError, match="num_returns"):
        @orion.remote(num_returns=bad)
        def f():
            return ()


# ------------------------------------------------------------ unpicklable args
def test_unpicklable_positional_argument_names_it(cluster):
    with pytest.raises(TypeError, match="argument 1") as info:
        identity.remote(1, _lock())
    assert "pickle" in str(info.value)
    assert orion.get(square.remote(3)) == 9  # nothing broke, nothing hangs


def test_unpicklable_keyword_argument_names_it(cluster):
    with pytest.raises(TypeError, match="the_lock"):
        identity.remote(1, the_lock=_lock())


def test_unpicklable_nested_argument(cluster):
    with pytest.raises(TypeError, match="argument 0"):
        identity.remote([1, {"deep": _lock()}])


def test_unpicklable_value_to_put(cluster):
    with pytest.raises(TypeError, match="pickle"):
        orion.put(_lock())
    assert orion.get(orion.put(1)) == 1


def test_unpicklable_argument_submits_nothing(cluster):
    before = orion.nodes()[0]["running"]
    with pytest.raises(TypeError):
        identity.remote(_lock())
    assert orion.nodes()[0]["running"] == before
    assert orion.get(identity.remote(1)) == ((1,), {})


def test_lambdas_and_closures_are_picklable_arguments(cluster):
    offset = 10
    args, _ = orion.get(identity.remote(lambda x: x + offset))
    assert args[0](1) == 11


# ------------------------------------------------------------------- addresses
@pytest.mark.parametrize("address", [
    "localhost:6380",
    "127.0.0.1:6380",
    "http://127.0.0.1:6380",
    "tcp://127.0.0.1",
    "tcp://:6380",
    "tcp://127.0.0.1:",
    "tcp://127.0.0.1:port",
    "tcp://127.0.0.1:0",
    "tcp://127.0.0.1:70000",
    "tcp://127.0.0.1:6380/path",
    "tcp://bad host:6380",
    "",
    42,
])
def test_bad_address_raises_value_error_at_init(address):
    with pytest.raises(ValueError, match="tcp://"):
        orion.init(address)
    assert not orion.is_initialized()


def test_bad_address_in_environment_raises_value_error(monkeypatch):
    monkeypatch.setenv("ORION_ADDRESS", "not-an-address")
    with pytest.raises(ValueError, match="tcp://"):
        orion.init()
    assert not orion.is_initialized()


# --------------------------------------------------------------------- timeouts
@pytest.mark.parametrize("timeout", [-1, -0.001])
def test_negative_timeout_raises_value_error(cluster, timeout):
    ref = orion.put(1)
    with pytest.raises(ValueError, match="timeout"):
        orion.get(ref, timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        orion.get([ref], timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        orion.wait([ref], timeout=timeout)


@pytest.mark.parametrize("timeout", ["1", [1], True])
def test_non_numeric_timeout_raises(cluster, timeout):
    with pytest.raises((TypeError, ValueError)):
        orion.get(orion.put(1), timeout=timeout)


# ------------------------------------------------------------ get / wait / cancel
def test_get_of_non_refs_raises_type_error(cluster):
    with pytest.raises(TypeError):
        orion.get(1)
    with pytest.raises(TypeError):
        orion.get([orion.put(1), 2])
    with pytest.raises(TypeError):
        orion.get("abc")


def test_wait_bad_arguments(cluster):
    refs = [orion.put(1), orion.put(2)]
    with pytest.raises(ValueError):
        orion.wait(refs, num_returns=3)
    with pytest.raises(ValueError):
        orion.wait(refs, num_returns=-1)
    with pytest.raises(TypeError):
        orion.wait([1, 2])
    with pytest.raises(ValueError):
        orion.wait([refs[0], refs[0]])


def test_cancel_of_non_ref_raises_type_error(cluster):
    with pytest.raises(TypeError):
        orion.cancel("not a ref")


def test_put_of_object_ref_is_refused(cluster):
    with pytest.raises(TypeError):
        orion.put(orion.put(1))


# ----------------------------------------------------------------- init arguments
@pytest.mark.parametrize("num_workers", [0, -1, "2", 1.5, True])
def test_bad_num_workers(transport, num_workers):
    with pytest.raises(ValueError, match="num_workers"):
        start_cluster(transport, num_workers=num_workers)
    assert not orion.is_initialized()


@pytest.mark.parametrize("resources", [["GPU"], {"GPU": -1}, {"GPU": "x"}, {1: 1}, {"CPU": 4}])
def test_bad_init_resources(transport, resources):
    with pytest.raises(ValueError, match="resources"):
        start_cluster(transport, resources=resources)
    assert not orion.is_initialized()


def test_bad_transport():
    with pytest.raises(ValueError, match="transport"):
        orion.init(transport="carrier-pigeon")
    assert not orion.is_initialized()
