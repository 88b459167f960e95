"""Shared fixtures and helpers for Orion's API test suite.

Every API test runs once per transport in ``TRANSPORTS``. Helpers that run
*inside* tasks (``wait_for_file``, ``touch``, ``bump_counter``) only use files,
so they work the same whether tasks run in worker threads (inproc) or in worker
processes (zmq).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import helpers_cluster
import orion

# Every API test runs on the in-process runtime and on an embedded ZeroMQ cluster.
TRANSPORTS = ["inproc", "zmq"]

# Transports whose workers are separate processes (they can be killed, and a
# task may call os._exit without taking the test process down).
PROCESS_TRANSPORTS = {"zmq"}

TESTS_DIR = Path(__file__).resolve().parent


# ----------------------------------------------------------------- clusters
def start_cluster(transport, num_workers=2, **kwargs):
    """``orion.init`` for ``transport`` ("inproc" or "zmq": an embedded cluster)."""
    if transport == "zmq":
        return orion.init(num_workers=num_workers, **kwargs)
    return orion.init(transport=transport, num_workers=num_workers, **kwargs)


@pytest.fixture(autouse=True)
def _clean_runtime(monkeypatch):
    """Each test starts and ends with no Orion runtime, whatever happened."""
    monkeypatch.delenv("ORION_ADDRESS", raising=False)
    orion.shutdown()
    yield
    orion.shutdown()


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    """The name of the transport under test (the parameter of ``cluster``)."""
    return request.param


@pytest.fixture
def cluster(transport):
    """A 2-worker cluster of the transport under test; always shut down."""
    info = start_cluster(transport, num_workers=2)
    try:
        yield info
    finally:
        orion.shutdown()


@pytest.fixture
def make_cluster(transport):
    """Start a cluster with custom ``init`` arguments: ``make_cluster(resources=...)``."""

    def make(num_workers=2, **kwargs):
        return start_cluster(transport, num_workers=num_workers, **kwargs)

    try:
        yield make
    finally:
        orion.shutdown()


@pytest.fixture
def needs_processes(transport):
    if transport not in PROCESS_TRANSPORTS:
        pytest.skip(f"needs worker processes; transport {transport!r} runs tasks in threads")


# ------------------------------------------------------ driver-side helpers
# One deadline poller for every test module (see helpers_cluster).
wait_until = helpers_cluster.wait_until


# -------------------------------------------------------- task-side helpers
# (module-level, file-based: they must work inside worker processes too)
def repo_pythonpath():
    """``PYTHONPATH`` for a subprocess that must import this checkout's ``orion``
    (and the dependencies this process finds through its own ``PYTHONPATH``)."""
    inherited = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(TESTS_DIR.parent)] + ([inherited] if inherited else []))


def touch(path, text=""):
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for_file(path, timeout=20.0):
    """Inside a task: block until ``path`` exists; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.002)


def bump_counter(path):
    """Append one line to ``path`` and return how many lines it now has (1 = first call).
    Tasks of one test that share a counter run one at a time, so no locking."""
    with open(path, "a") as f:
        f.write("x\n")
    with open(path) as f:
        return len(f.read().splitlines())


def read_counter(path):
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def intervals_overlap(spans):
    """True when any two (start, end) spans overlap."""
    spans = sorted(spans)
    return any(nxt[0] < prev[1] for prev, nxt in zip(spans, spans[1:]))


@pytest.fixture
def local_cluster():
    """A head and worker nodes started through the ``orion`` CLI
    (``helpers_cluster.LocalCluster``); everything is stopped afterwards."""
    cluster = helpers_cluster.LocalCluster()
    try:
        yield cluster
    finally:
        orion.shutdown()
        cluster.cleanup()
