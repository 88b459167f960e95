"""The chaos test (``scripts/chaos.sh``), run as a user runs it: a head and 3
nodes run a 3,110-task DAG while a worker process or a node is SIGKILLed every
second and the head is killed and restarted once."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import repo_pythonpath

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_chaos_script_passes():
    done = subprocess.run(["bash", str(REPO / "scripts" / "chaos.sh"), "--duration", "12"], cwd=REPO,
                          capture_output=True, text=True, timeout=230,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                                   "PYTHONPATH": repo_pythonpath()})
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
    assert "killed head" in done.stdout
    assert done.stdout.count("killed ") >= 8  # one kill a second for the whole run
