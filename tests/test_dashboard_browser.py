"""The dashboard in a real headless Chromium, against a running cluster: the
page shows the nodes and the finished tasks; a screenshot is kept under build/
(CI keeps it as an artifact). CI installs Debian's chromium; where it cannot be
installed, this test skips and says so."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

import orion
from helpers_cluster import free_port, wait_until

pytestmark = pytest.mark.timeout(120)

BUILD = Path(__file__).resolve().parent.parent / "build"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


@orion.remote(name="shown_square")
def shown_square(x):
    return x * x


@orion.remote(name="shown_failure")
def shown_failure():
    raise ValueError("visible in the dashboard")


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium found: install Debian's `chromium` package (CI's .ci/run does) to run the "
                "dashboard browser test")


def run_chromium(binary, tmp_path, *args):
    profile = tmp_path / "profile"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90)


def test_dashboard_shows_nodes_and_finished_tasks_in_chromium(tmp_path):
    binary = chromium()
    info = orion.init(num_workers=2, dashboard_port=free_port())
    try:
        assert orion.get([shown_square.remote(i) for i in range(12)]) == [i * i for i in range(12)]
        with pytest.raises(ValueError):
            orion.get(shown_failure.remote())
        node_id = orion.nodes()[0]["node_id"]
        url = info.dashboard_url

        def api_ready():
            with urllib.request.urlopen(url + "api/state", timeout=10) as response:
                state = json.loads(response.read())
            return state["errors"] and state

        wait_until(api_ready, 20)
        # Let the page load and poll /api/state (virtual time: timers run at once).
        dom = run_chromium(binary, tmp_path, "--virtual-time-budget=8000", "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        assert node_id in html, "the page does not list the node"
        assert "shown_square" in html, "the page does not show the finished tasks"
        assert "visible in the dashboard" in html, "the page does not show the error"
        nodes_table = re.search(r'<table id="nodes">.*?</table>', html, re.S).group(0)
        assert nodes_table.count("<tr") >= 2  # header + our node
        BUILD.mkdir(exist_ok=True)
        shot = BUILD / "dashboard.png"
        result = run_chromium(binary, tmp_path, "--virtual-time-budget=8000", "--window-size=1280,1000",
                              f"--screenshot={shot}", url)
        assert result.returncode == 0, result.stderr[-2000:]
        assert shot.exists() and shot.stat().st_size > 10_000
    finally:
        orion.shutdown()
