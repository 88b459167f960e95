"""The web dashboard: ``orion.init(dashboard_port=...)`` and ``orion head --dashboard-port``."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

import orion

from helpers_cluster import LocalCluster, free_port, wait_until

pytestmark = pytest.mark.timeout(90)


@orion.remote
def double(x):
    return 2 * x


@orion.remote
def exploder(tag):
    raise RuntimeError(f"kaboom-{tag}")


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


def state(base):
    status, content_type, body = fetch(base + "api/state")
    assert status == 200 and content_type == "application/json"
    return json.loads(body)


def test_dashboard_page_and_state(transport):
    port = free_port()
    kwargs = {"transport": "inproc"} if transport == "inproc" else {}
    info = orion.init(num_workers=2, dashboard_port=port, **kwargs)
    base = info.dashboard_url
    assert base == f"http://127.0.0.1:{port}/"  # loopback unless told otherwise

    status, content_type, page = fetch(base)
    assert status == 200 and content_type.startswith("text/html")
    assert b"<html" in page and b"api/state" in page  # the page polls the JSON endpoint

    first = state(base)
    for key in ("nodes", "tasks", "stream", "errors"):
        assert key in first
    assert [n["alive"] for n in first["nodes"]] == [True]
    assert first["nodes"][0]["resources"]["CPU"] == 2

    assert orion.get([double.remote(i) for i in range(5)]) == [0, 2, 4, 6, 8]
    with pytest.raises(RuntimeError, match="kaboom-42"):
        orion.get(exploder.remote(42))

    def failed_shown():
        current = state(base)
        return current if any("kaboom-42" in e["message"] for e in current["errors"]) else None

    current = wait_until(failed_shown, 15)
    (error,) = [e for e in current["errors"] if "kaboom-42" in e["message"]]
    assert error["name"] == exploder._default_name and error["kind"] == "task_error"
    assert "Traceback" in error["traceback"] and "kaboom-42" in error["traceback"]
    assert "exploder" in error["traceback"]  # the frame of the task's function
    by_name = current["tasks"]["by_name"]
    assert by_name[double._default_name]["finished"] == 5
    assert by_name[exploder._default_name]["failed"] == 1
    assert set(current["tasks"]["by_state"]) >= {"pending", "ready", "running"}
    stream = current["stream"]
    ran = [t for t in stream if t["name"] == double._default_name]
    assert len(ran) == 5
    for task in ran:
        assert task["state"] == "finished" and task["worker"] and task["node"] == current["nodes"][0]["node_id"]
        assert task["submitted"] <= task["dispatched"] and task["started"] <= task["finished"]
    node = current["nodes"][0]
    assert {"running", "queued", "load", "available"} <= set(node)

    with pytest.raises(urllib.error.HTTPError) as excinfo:
        fetch(base + "nope")
    assert excinfo.value.code == 404
    orion.shutdown()
    with pytest.raises(OSError):
        fetch(base)


def test_stream_is_bounded():
    info = orion.init(transport="inproc", num_workers=2, dashboard_port=free_port())
    orion.get([double.remote(i) for i in range(300)])
    current = state(info.dashboard_url)
    assert len(current["stream"]) == 200
    assert current["tasks"]["by_name"][double._default_name]["finished"] == 300


def test_orion_head_serves_the_dashboard():
    local = LocalCluster()
    port = free_port()
    try:
        head = local.start_head(extra=["--dashboard-port", port])
        head.wait_for_line(rf"dashboard on http://127\.0\.0\.1:{port}/")
        node_id = local.node_id("d")
        local.start_node(node_id, num_workers=1)
        local.wait_registered([node_id])
        base = f"http://127.0.0.1:{port}/"
        current = wait_until(lambda: (s := state(base))["nodes"] and s, 15)
        assert current["address"] == local.address
        assert current["nodes"][0]["node_id"] == node_id
        assert current["nodes"][0]["heartbeat_age"] is not None
        orion.init(address=local.address)
        with pytest.raises(RuntimeError):
            orion.get(exploder.remote("cli"))
        current = wait_until(lambda: (s := state(base))["errors"] and s, 15)
        assert "kaboom-cli" in current["errors"][0]["message"]
        assert "kaboom-cli" in current["errors"][0]["traceback"]
    finally:
        orion.shutdown()
        local.cleanup()


SHIM = r"""
class El { constructor(tag) { this.tag = tag; this.children = []; this.style = {}; this.textContent = ""; this.className = ""; }
  appendChild(c) { this.children.push(c); return c; } replaceChildren(...c) { this.children = c; } }
const els = {};
global.Node = El;
global.document = {querySelector: (s) => els[s] || (els[s] = new El(s)), createElement: (t) => new El(t),
                   createTextNode: (t) => { const e = new El("#text"); e.textContent = t; return e; }};
global.setTimeout = () => {};
global.fetch = async () => ({ok: true, json: async () => STATE});
"""

CHECK = r"""
setImmediate(() => {
  const counts = ["#nodes tbody", "#names tbody", "#stream tbody", "#errors"].map((s) => els[s].children.length);
  console.log(JSON.stringify({conn: els["#conn"].textContent, counts}));
});
"""


def test_page_script_renders_a_state(tmp_path):
    """The page's script runs against a real ``/api/state`` (in node, with a tiny DOM stand-in)."""
    import shutil
    import subprocess

    from orion.observe.dashboard import PAGE

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    info = orion.init(transport="inproc", num_workers=2, dashboard_port=free_port())
    orion.get([double.remote(i) for i in range(3)])
    with pytest.raises(RuntimeError):
        orion.get(exploder.remote("js"))
    current = wait_until(lambda: (s := state(info.dashboard_url))["errors"] and s, 15)
    html = PAGE.read_text()
    script = html[html.index("<script>") + len("<script>"):html.index("</script>")].replace('"use strict";', "")
    path = tmp_path / "page.js"
    path.write_text(f"const STATE = {json.dumps(current)};\n{SHIM}\n{script}\n{CHECK}")
    result = subprocess.run([node, str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout.strip().splitlines()[-1])
    assert rendered["conn"] == "live"
    assert rendered["counts"] == [1, 2, 4, 1]  # one node, two names, four recent tasks, one error
