"""The embedded cluster's worker processes reach its head over an IPC endpoint
(a Unix socket in a private directory of its own), which is gone after
shutdown; where no such socket can be made, they connect over TCP as before."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

import orion
from orion.api import _current_client
from orion.store.node_store import NodeStore
from orion.transport.zmq_head import HeadServer

pytestmark = pytest.mark.timeout(60)


@orion.remote
def pid():
    return os.getpid()


def _worker_addresses(client):
    """The head address each of the node's worker processes was started with."""
    addresses = []
    for worker in client.node.workers.values():
        with open(f"/proc/{worker.process.pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
        addresses.append(argv[argv.index(b"orion.transport.zmq_worker") + 1].decode())
    return addresses


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_embedded_workers_connect_over_ipc_and_the_socket_goes_at_shutdown():
    orion.init(num_workers=2)
    try:
        client = _current_client()
        address = client.server.local_address
        assert address.startswith("ipc://"), address
        path = address[len("ipc://"):]
        directory = os.path.dirname(path)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700  # this user's only
        assert os.getpid() not in orion.get([pid.remote() for _ in range(20)])  # tasks run over it
        addresses = _worker_addresses(client)
        assert addresses and set(addresses) == {address}
    finally:
        orion.shutdown()
    assert not os.path.exists(directory)


def test_a_tmpdir_too_long_for_a_unix_socket_falls_back_to_tcp(tmp_path, monkeypatch):
    long_dir = tmp_path / ("d" * 120)
    long_dir.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(long_dir))
    orion.init(num_workers=1)
    try:
        client = _current_client()
        assert client.server.local_address == client.server.address
        assert client.server.address.startswith("tcp://")
        assert orion.get(pid.remote()) != os.getpid()
    finally:
        orion.shutdown()
    assert not [name for name in os.listdir(long_dir) if name.startswith("orion-head-")]


def test_a_head_without_local_endpoint_listens_on_tcp_only():
    server = HeadServer("127.0.0.1", 0)
    try:
        assert server.local_address == server.address
        assert server._life.remove_ipc_dir is None
    finally:
        server.start()
        server.stop()


def test_cleanup_stale_removes_the_socket_directory_of_a_dead_head(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / f"orion-head-0123456789ab-{child.pid}"
    alive = tmp_path / f"orion-head-0123456789ab-{os.getpid()}"
    for directory in (dead, alive):
        directory.mkdir()
        (directory / "head.sock").write_bytes(b"")
    removed = NodeStore.cleanup_stale(shm_root=str(tmp_path), spill_root=str(tmp_path))
    assert removed == [str(dead)]
    assert alive.exists()
