"""No orphans: however an embedded-cluster driver ends (shutdown, Ctrl-C,
SIGTERM, SIGKILL), its worker processes exit, its port is freed, and the
directory of its head's IPC socket goes (after SIGTERM or SIGKILL: when the
next node of this machine starts, ``NodeStore.cleanup_stale``)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers_cluster import pid_alive, port_is_free, wait_until
from orion.store.node_store import NodeStore

SCRIPT = textwrap.dedent("""
    import os, sys, time
    import orion
    from orion.api import _current_client

    @orion.remote
    def pid():
        return os.getpid()

    info = orion.init(num_workers=2)
    pids = set(orion.get([pid.remote() for _ in range(20)]))
    print(_current_client().server.local_address, info.address.rsplit(":", 1)[1], *sorted(pids), flush=True)
    if sys.argv[1] == "shutdown":
        orion.shutdown()
        print("done", flush=True)
    else:
        time.sleep(600)  # wait to be killed
""")


@pytest.mark.parametrize("ending", ["shutdown", "SIGINT", "SIGTERM", "SIGKILL"])
@pytest.mark.timeout(60)
def test_driver_ending_leaves_no_workers_and_no_port(tmp_path, ending):
    script = tmp_path / "driver.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), ending], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ipc_address, *numbers = proc.stdout.readline().split()
        port, *pids = map(int, numbers)
        assert len(pids) >= 1
        assert ipc_address.startswith("ipc://")
        ipc_dir = os.path.dirname(ipc_address[len("ipc://"):])
        assert os.path.isdir(ipc_dir)
        if ending != "shutdown":
            assert all(pid_alive(p) for p in pids)
            os.kill(proc.pid, getattr(signal, ending))
        proc.wait(30)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 15,
                   message=lambda: f"worker processes outlived the driver: {[p for p in pids if pid_alive(p)]}")
        wait_until(lambda: port_is_free(port), 15, message=f"port {port} still bound")
        if ending in ("SIGTERM", "SIGKILL"):  # (Python's default for SIGTERM: no clean-up either)
            assert os.path.isdir(ipc_dir)  # nobody could clean up after it...
            NodeStore.cleanup_stale()  # ...until the next node of this machine starts
        assert not os.path.exists(ipc_dir)
    finally:
        if proc.poll() is None:
            proc.kill()
