"""``orion.get(refs, progress=True)`` and ``orion.progress(refs)``: results with a
progress bar on a terminal and nothing extra elsewhere; ``progress`` yields
values in completion order. Every test runs on both transports (``cluster``)."""
from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest

import orion
from conftest import repo_pythonpath, touch, wait_for_file

BAR_BYTES = ("\r", "\x1b", "%|", "task/s")


@orion.remote
def square(x):
    return x * x


@orion.remote
def slow_square(x, path):
    wait_for_file(path)
    return x * x


@orion.remote
def fail(message):
    raise ValueError(message)


def assert_no_bar(capfd):
    out, err = capfd.readouterr()
    for text in (out, err):
        for marker in BAR_BYTES:
            assert marker not in text, (marker, text)


def test_get_with_progress_returns_the_values(cluster, capfd):
    refs = [square.remote(i) for i in range(50)]
    assert orion.get(refs, progress=True) == [i * i for i in range(50)]
    assert orion.get(refs[3], progress=True) == 9
    assert orion.get([], progress=True) == []
    assert_no_bar(capfd)  # not a terminal: no bar, no control characters


def test_get_with_progress_raises_task_errors_and_timeouts(cluster, tmp_path, capfd):
    with pytest.raises(ValueError, match="boom"):
        orion.get([square.remote(1), fail.remote("boom")], progress=True)
    gate = tmp_path / "gate"
    ref = slow_square.remote(2, str(gate))
    with pytest.raises(orion.GetTimeoutError):
        orion.get(ref, timeout=0.2, progress=True)
    touch(gate)
    assert orion.get(ref, progress=True) == 4
    assert_no_bar(capfd)


def test_progress_yields_results_in_completion_order(cluster, tmp_path, capfd):
    gate = tmp_path / "gate"
    refs = [slow_square.remote(7, str(gate)), square.remote(3)]
    results = orion.progress(refs)
    assert next(results) == 9  # the fast task first, while the slow one still waits
    touch(gate)
    assert next(results) == 49
    with pytest.raises(StopIteration):
        next(results)
    assert_no_bar(capfd)


def test_progress_yields_every_result_once(cluster):
    refs = [square.remote(i) for i in range(200)]
    orion.get(refs[:50])  # some are done before progress starts
    assert sorted(orion.progress(refs)) == sorted(i * i for i in range(200))
    assert list(orion.progress([])) == []
    assert list(orion.progress(refs[5])) == [25]


def test_progress_raises_a_failed_tasks_error_in_its_turn(cluster):
    results = orion.progress([fail.remote("bad")])
    with pytest.raises(orion.TaskError, match="bad"):
        next(results)


def test_progress_timeout_and_bad_input(cluster, tmp_path):
    gate = tmp_path / "gate"
    ref = slow_square.remote(1, str(gate))
    with pytest.raises(orion.GetTimeoutError):
        list(orion.progress([ref], timeout=0.2))
    touch(gate)
    assert list(orion.progress([ref])) == [1]
    with pytest.raises(TypeError):
        orion.progress(["not a ref"])
    with pytest.raises(ValueError):
        orion.progress([], timeout=-1)


@orion.remote
def fan_out(n):
    """Inside a task: progress and get(progress=True) work, without a bar."""
    refs = [square.remote(i) for i in range(n)]
    in_order = orion.get(refs, progress=True)
    completed = sorted(orion.progress(refs))
    return in_order, completed


def test_progress_inside_a_task(cluster):
    in_order, completed = orion.get(fan_out.remote(6), timeout=30)
    assert in_order == [i * i for i in range(6)]
    assert completed == sorted(in_order)


def test_progress_needs_an_initialized_cluster():
    with pytest.raises(orion.OrionError):
        orion.progress([])


# ------------------------------------------------------------ on a terminal
BAR_SCRIPT = textwrap.dedent("""
    import orion

    @orion.remote
    def square(x):
        return x * x

    with orion.init(transport=TRANSPORT, num_workers=2):
        values = orion.get([square.remote(i) for i in range(40)], progress=True)
        print("got", sum(values))
        print("yielded", sum(orion.progress([square.remote(i) for i in range(30)], desc="squares")))
""")


def run_on_a_terminal(command, timeout=40):
    """Run ``command`` with a pseudo-terminal (100 columns) as stdout and stderr; its output."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": repo_pythonpath()}
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env,
                               close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process closed its end
                break
            if not data:
                break
            chunks.append(data)
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, b"".join(chunks)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("transport", ["inproc", "zmq"])
def test_a_bar_is_drawn_on_a_terminal(tmp_path, transport):
    script = tmp_path / "bar.py"
    script.write_text(BAR_SCRIPT.replace("TRANSPORT", repr(transport)))
    output = run_on_a_terminal([sys.executable, str(script)])
    assert f"got {sum(i * i for i in range(40))}" in output
    assert f"yielded {sum(i * i for i in range(30))}" in output
    assert "40/40" in output and "task/s" in output  # done/total and the rate
    assert "squares: 100%" in output and "30/30" in output
