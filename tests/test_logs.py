"""Worker output at the driver: ``print`` and ``logging`` in a task show up in the
driver's terminal, each line prefixed ``(task pid=PID node=NODE)``, whole, with
repeats collapsed; ``orion.init(log_to_driver=False)`` turns it off.

The end-to-end tests run a driver script in a subprocess on an embedded
cluster and read its stdout/stderr; the unit tests drive the capture
(``task_output``) and the printer (``log_printer``) directly.
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
import threading

import pytest

import orion
from conftest import repo_pythonpath, touch, wait_for_file, wait_until
from orion.log_printer import LogPrinter
from orion.transport import protocol
from orion.transport.logs import decode_peer_records, decode_worker_records
from orion.transport.protocol import ProtocolError
from orion.transport.task_output import LINE_LIMIT, MAX_LINE, TaskOutput

PREFIX = r"\((?P<name>[\w.<>]+) pid=(?P<pid>\d+) node=(?P<node>\S+)\) "


def run_driver(tmp_path, body, *, init="num_workers=2", timeout=50):
    """Run ``body`` as a driver script inside ``with orion.init(...)``; returns CompletedProcess."""
    script = tmp_path / "driver.py"
    script.write_text("import logging, os, sys\nimport orion\n\n" + textwrap.dedent(body).replace(
        "INIT", init))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": repo_pythonpath()})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


# ----------------------------------------------------------------- end to end
def test_print_stderr_and_logging_reach_the_driver_with_a_prefix(tmp_path):
    done = run_driver(tmp_path, """
        @orion.remote
        def shout(i):
            print("hello", i)
            print("oops", i, file=sys.stderr)
            logging.warning("careful %d", i)
            print("no newline at the end", i, end="")
            return i

        with orion.init(INIT) as info:
            print("answer", sum(orion.get([shout.remote(i) for i in range(4)])))
            print("driver pid", os.getpid())
    """)
    out, err = done.stdout, done.stderr
    assert "answer 6" in out
    driver_pid = int(re.search(r"driver pid (\d+)", out).group(1))
    for i in range(4):
        match = re.search(PREFIX + f"hello {i}$", out, re.M)
        assert match, out
        assert match["name"] == "shout" and int(match["pid"]) != driver_pid
        assert match["node"] == f"local-{driver_pid}"
        assert re.search(PREFIX + f"no newline at the end {i}$", out, re.M), out
        assert re.search(PREFIX + f"oops {i}$", err, re.M), err
        assert re.search(PREFIX + f"WARNING:root:careful {i}$", err, re.M), err
    # stderr lines stay on stderr, stdout lines on stdout
    assert "oops" not in out and "hello" not in err
    # A task's output is printed before get returns its result.
    assert out.index("hello 3") < out.index("answer 6")


def test_output_of_a_nested_task_reaches_the_driver(tmp_path):
    done = run_driver(tmp_path, """
        @orion.remote
        def child(i):
            print("child line", i)
            return i

        @orion.remote
        def parent():
            print("parent line")
            return sum(orion.get([child.remote(i) for i in range(3)]))

        @orion.remote
        def orphan_parent():
            # submits a child it never waits for: the child outlives it
            return [child.remote(10)]

        with orion.init(INIT):
            print(f"answer {orion.get(parent.remote())}")
            # One write for the text: the orphan child's line, printed by the
            # parent's worker process, may land between print's two writes.
            print(f"orphan {orion.get(orion.get(orphan_parent.remote())[0])}")
    """)
    out = done.stdout
    assert "answer 3" in out and "orphan 10" in out
    assert re.search(PREFIX + "parent line$", out, re.M), out
    for i in range(3):
        # printed in the child, forwarded to the parent's worker, and on to the driver
        assert re.search(PREFIX + PREFIX.replace("?P<", "?P<c") + f"child line {i}$", out, re.M), out
    assert "Traceback" not in done.stderr


def test_log_to_driver_false_prints_nothing(tmp_path):
    done = run_driver(tmp_path, """
        @orion.remote
        def secretive(i):
            print("SECRET-out", i)
            print("SECRET-err", i, file=sys.stderr)
            logging.warning("SECRET-log %d", i)
            return i

        with orion.init(INIT):
            print("answer", sum(orion.get([secretive.remote(i) for i in range(4)])))
    """, init="num_workers=2, log_to_driver=False")
    assert "answer 6" in done.stdout
    assert "SECRET" not in done.stdout + done.stderr


def test_inproc_tasks_print_straight_to_the_driver(tmp_path):
    done = run_driver(tmp_path, """
        @orion.remote
        def hello():
            print("plain hello")
            return 1

        with orion.init(INIT):
            print("answer", orion.get(hello.remote()))
    """, init="transport='inproc', num_workers=2, log_to_driver=True")
    assert "plain hello" in done.stdout and "answer 1" in done.stdout


# ------------------------------------------------------ in-process drivers
# (the printer writes to whatever sys.stdout is, so capsys sees it)
@orion.remote
def piecewise(task, lines, width):
    """Many lines, each written in small pieces, some on stderr."""
    for n in range(lines):
        stream = sys.stderr if n % 5 == 0 else sys.stdout
        text = f"task {task} line {n} " + "x" * width
        for start in range(0, len(text), 7):
            stream.write(text[start:start + 7])
        stream.write("\n")
    return task


LINE = re.compile(PREFIX + r"task (?P<task>\d+) line (?P<line>\d+) (?P<x>x*)$")


def test_lines_from_concurrent_tasks_are_whole(capsys):
    orion.init(num_workers=2)
    tasks, lines, width = 6, 3 * LINE_LIMIT, 60  # more than a batch: they stream while the task runs
    assert orion.get([piecewise.remote(t, lines, width) for t in range(tasks)]) == list(range(tasks))
    orion.shutdown()
    captured = capsys.readouterr()
    seen = set()
    for stream_name, text in (("stdout", captured.out), ("stderr", captured.err)):
        for line in text.splitlines():
            match = LINE.match(line)
            assert match and len(match["x"]) == width, f"mangled {stream_name} line: {line!r}"
            key = (int(match["task"]), int(match["line"]))
            assert key not in seen
            assert (key[1] % 5 == 0) == (stream_name == "stderr")
            seen.add(key)
    assert seen == {(t, n) for t in range(tasks) for n in range(lines)}


@orion.remote
def say_same(i):
    print("the very same line")
    return i


def test_repeated_lines_from_many_tasks_are_collapsed_with_a_count(capsys):
    orion.init(num_workers=2)
    count = 40
    assert orion.get([say_same.remote(i) for i in range(count)]) == list(range(count))
    orion.shutdown()  # prints the summaries still pending
    out = capsys.readouterr().out
    plain = re.findall(PREFIX + "the very same line$", out, re.M)
    repeats = [int(m["n"]) for m in re.finditer(
        PREFIX + r"the very same line \[repeated (?P<n>\d+)x across cluster\]$", out, re.M)]
    assert repeats, out  # collapsed, with a count
    assert len(plain) + sum(repeats) == count
    assert len(plain) < count


@orion.remote
def speak_then_wait(path):
    print("first line, before the wait")
    wait_for_file(path)
    return "done"


def test_a_running_task_streams_its_output(tmp_path, capsys):
    """A line printed at the start of a long task shows up while it still runs."""
    orion.init(num_workers=1)
    path = tmp_path / "go"
    ref = speak_then_wait.remote(str(path))
    seen = []

    def arrived():
        seen.append(capsys.readouterr().out)
        return "first line, before the wait" in "".join(seen)

    wait_until(arrived, timeout=20)
    touch(path)
    assert orion.get(ref, timeout=20) == "done"


@orion.remote
def nested_speaker(path):
    return orion.get(speak_then_wait.remote(path))


def test_a_nested_task_streams_its_output_through_its_parent(tmp_path, capsys):
    orion.init(num_workers=2)
    path = tmp_path / "go"
    ref = nested_speaker.remote(str(path))
    seen = []

    def arrived():
        seen.append(capsys.readouterr().out)
        return re.search(PREFIX.replace("?P<", "?P<p") + PREFIX + "first line, before the wait$", "".join(seen),
                         re.M)

    match = wait_until(arrived, timeout=20)
    assert match["pname"] == "nested_speaker" and match["name"] == "speak_then_wait"
    touch(path)
    assert orion.get(ref, timeout=20) == "done"


# ------------------------------------------------------------------- capture
def test_capture_cuts_lines_and_restores_the_streams():
    output = TaskOutput()
    real = sys.stdout, sys.stderr
    output.start("t1", "job")
    try:
        print("one", "two")
        sys.stdout.write("par")
        sys.stdout.write("tial\nnext")
        print("problem", file=sys.stderr)
        sys.stderr.write("\r 10%\r 50%\r100%\n")  # a progress bar: what the terminal would show
        sys.stdout.write("line with crlf\r\n")
        assert not sys.stdout.isatty() and sys.stdout.encoding == "utf-8"
    finally:
        assert output.stop()
    assert (sys.stdout, sys.stderr) == real
    assert output.take() == [
        ["t1", "job", "stdout", "one two"],
        ["t1", "job", "stdout", "partial"],
        ["t1", "job", "stderr", "problem"],
        ["t1", "job", "stderr", "100%"],
        ["t1", "job", "stdout", "nextline with crlf"],
    ]
    assert output.take() == []
    output.start("t2", "quiet")
    assert not output.stop()  # nothing printed: nothing to send


def test_capture_sends_very_long_lines_in_pieces():
    output = TaskOutput()
    output.start("t1", "job")
    try:
        print("a" * (2 * MAX_LINE + 5))
        sys.stdout.write("b" * (3 * MAX_LINE) + "\nend\n")
    finally:
        output.stop()
    pieces = [record[3] for record in output.take()]
    assert pieces == ["a" * MAX_LINE] * 2 + ["a" * 5] + ["b" * MAX_LINE] * 3 + ["end"]


def test_capture_asks_to_send_when_many_lines_wait():
    calls = []
    now = [100.0]
    output = TaskOutput(on_full=lambda: calls.append(len(output.take())), clock=lambda: now[0])
    output.start("t1", "job")
    try:
        print("first")  # a task's first line goes at once
        assert calls == [1]
        for i in range(LINE_LIMIT):
            print(i)  # within FLUSH_INTERVAL of the last send: buffered
        assert calls == [1]
        print("one too many")
        assert calls == [1, LINE_LIMIT + 1]
        print("soon after")
        now[0] += 1.0
        print("after a pause")  # the last send is old: this goes now, with what waited
        assert calls == [1, LINE_LIMIT + 1, 2]
    finally:
        output.stop()


# ------------------------------------------------------------------- printer
def _records(name, pid, *lines, stream="stdout", node="n1"):
    return [["t", pid, node, name, stream, line] for line in lines]


def test_printer_prefixes_lines_and_routes_streams():
    out, err = io.StringIO(), io.StringIO()
    printer = LogPrinter(stdout=out, stderr=err)
    printer.print_records(_records("f", 12, "a", "b") + _records("f", 12, "c", stream="stderr"))
    assert out.getvalue() == "(f pid=12 node=n1) a\n(f pid=12 node=n1) b\n"
    assert err.getvalue() == "(f pid=12 node=n1) c\n"


def test_printer_collapses_repeats_within_the_window():
    now = [0.0]
    out = io.StringIO()
    printer = LogPrinter(window=0.5, clock=lambda: now[0], stdout=out, stderr=io.StringIO())
    printer._arm = lambda first: None  # no timer thread: the clock is fake
    printer.print_records(_records("f", 1, "hello"))
    for pid in range(2, 9):
        printer.print_records(_records("f", pid, "hello"))
    printer.print_records(_records("f", 9, "other"))
    assert out.getvalue() == "(f pid=1 node=n1) hello\n(f pid=9 node=n1) other\n"
    now[0] = 0.6  # the window ended: the next batch brings the summary first
    printer.print_records(_records("f", 3, "hello"))
    assert out.getvalue().splitlines()[2:] == [
        "(f pid=8 node=n1) hello [repeated 7x across cluster]",
        "(f pid=3 node=n1) hello",  # a new window
    ]
    printer.print_records(_records("f", 4, "hello"))
    printer.close()  # pending summaries come out at close
    assert out.getvalue().splitlines()[4:] == ["(f pid=4 node=n1) hello [repeated 1x across cluster]"]


def test_printer_summary_arrives_without_further_output():
    out = io.StringIO()
    printer = LogPrinter(window=0.05, stdout=out, stderr=io.StringIO())
    printer.print_records(_records("f", 1, "tick"))
    printer.print_records(_records("f", 2, "tick"))
    wait_until(lambda: "[repeated 1x across cluster]" in out.getvalue(), timeout=10)
    printer.close()


def test_printer_writes_whole_lines_from_many_threads():
    class SlowStream(io.StringIO):
        def write(self, text):  # one character at a time: interleaving would show
            for ch in text:
                super().write(ch)
            return len(text)

    out = SlowStream()
    printer = LogPrinter(stdout=out, stderr=io.StringIO())

    def burst(pid):
        for n in range(50):
            printer.print_records(_records("f", pid, f"pid {pid} line {n} " + "y" * 40))

    threads = [threading.Thread(target=burst, args=(pid,)) for pid in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    printer.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 200
    assert all(re.fullmatch(r"\(f pid=(\d) node=n1\) pid \1 line \d+ y{40}", line) for line in lines)


def test_printer_never_raises():
    class Broken(io.StringIO):
        def write(self, text):
            raise BrokenPipeError("gone")

    printer = LogPrinter(stdout=Broken(), stderr=Broken())
    printer.print_records(_records("f", 1, "x"))
    printer.close()


# ------------------------------------------------------------------ protocol
def test_logs_records_are_validated():
    assert decode_worker_records([["t", "f", "stdout", "x"]]) == [["t", "f", "stdout", "x"]]
    assert decode_peer_records([["t", 1, "n", "f", "stderr", "x"]]) == [["t", 1, "n", "f", "stderr", "x"]]
    for bad in ([["t", "f", "stdin", "x"]], [["t", "f", "stdout"]], [["t", 1, "stdout", "x"]], ["x"], 5):
        with pytest.raises(ProtocolError):
            decode_worker_records(bad)
    for bad in ([["t", "1", "n", "f", "stdout", "x"]], [["t", True, "n", "f", "stdout", "x"]],
                [["t", 1, "n", "f", "out", "x"]], [["t", 1, "n", "f", "stdout", b"x"]]):
        with pytest.raises(ProtocolError):
            decode_peer_records(bad)
    with pytest.raises(ProtocolError):
        protocol.decode(protocol.encode("logs", ["not a list"]))


# ------------------------------------------------------- a remote driver
@orion.remote
def remote_hello(i):
    print("remote hello", i)
    print("remote problem", i, file=sys.stderr)
    return i


@pytest.mark.timeout(60)
def test_a_driver_connected_by_address_gets_the_output(capsys):
    from helpers_cluster import LocalCluster

    cluster = LocalCluster()
    try:
        cluster.start_head()
        node_id = cluster.node_id("logs")
        node = cluster.start_node(node_id, num_workers=2)
        cluster.wait_registered([node_id])
        orion.init(address=cluster.address)
        assert orion.get([remote_hello.remote(i) for i in range(3)], timeout=30) == [0, 1, 2]
        orion.shutdown()
        captured = capsys.readouterr()
        for i in range(3):
            match = re.search(PREFIX + f"remote hello {i}$", captured.out, re.M)
            assert match and match["node"] == node_id, captured.out
            assert re.search(PREFIX + f"remote problem {i}$", captured.err, re.M), captured.err
        orion.init(address=cluster.address, log_to_driver=False)
        assert orion.get(remote_hello.remote(7), timeout=30) == 7
        orion.shutdown()
        assert "remote hello" not in capsys.readouterr().out
        assert "remote hello" not in node.output()  # the worker's own terminal stays quiet
    finally:
        orion.shutdown()
        cluster.cleanup()
