"""Printing worker output at the driver, the way Ray does.

Each line that a task printed arrives as ``[task id, worker pid, node id,
task name, stream, line]`` and is written as ``(name pid=PID node=NODE) line``
to ``sys.stdout`` (``stderr`` lines to ``sys.stderr``). A batch is written
with one ``write`` under a lock, so lines never interleave mid-line.

Repeated lines are collapsed (like Ray, in its simplest form): a line is
printed the first time; copies identical apart from the prefix that arrive
within ``window`` seconds of it are held back, and when the window ends (or
at ``close``) one summary line ``(prefix of the last copy) line [repeated Nx
across cluster]`` says how many there were.
"""
from __future__ import annotations

import sys
import threading
import time

WINDOW = 0.5  # seconds

_STREAMS = ("stdout", "stderr")


class _Seen:
    __slots__ = ("first", "count", "prefix")

    def __init__(self, first):
        self.first = first
        self.count = 0  # copies held back
        self.prefix = None  # of the last copy held back


def prefix(task_name, pid, node_id):
    return f"({task_name} pid={pid} node={node_id}) "


class LogPrinter:
    def __init__(self, window=WINDOW, clock=time.monotonic, stdout=None, stderr=None):
        self.window = window
        self._clock = clock
        self._stdout = stdout  # None: whatever sys.stdout is when a line is printed
        self._stderr = stderr
        self._lock = threading.Lock()
        self._seen = {}  # (stream, line) -> _Seen, in order of first appearance
        self._timer = None
        self._closed = False

    def print_records(self, records):
        """Print one batch of ``[task id, pid, node id, task name, stream, line]``
        records. Never raises (it runs on the runtime's I/O threads)."""
        try:
            self._print(records)
        except Exception:  # a closed or broken stdout must not take the runtime down
            pass

    def _print(self, records):
        out, err = [], []
        with self._lock:
            now = self._clock()
            self._expire(now, out, err)
            seen = self._seen
            held = None  # first appearance of the earliest line held back now
            for _task_id, pid, node_id, name, stream, line in records:
                key = (stream, line)
                head = prefix(name, pid, node_id)
                entry = seen.get(key)
                if entry is None:
                    seen[key] = _Seen(now)
                else:
                    entry.count += 1
                    entry.prefix = head
                    if held is None or entry.first < held:
                        held = entry.first
                    continue
                (err if stream == "stderr" else out).append(head + line + "\n")
            self._write(out, err)
            if held is not None:
                self._arm(held)

    def _expire(self, now, out, err, everything=False):
        """Forget lines whose window ended; summarize those that were held back."""
        seen = self._seen
        while seen:
            key = next(iter(seen))
            entry = seen[key]
            if not everything and now - entry.first < self.window:
                break  # entries are in order of first appearance
            del seen[key]
            if entry.count:
                stream, line = key
                (err if stream == "stderr" else out).append(
                    f"{entry.prefix}{line} [repeated {entry.count}x across cluster]\n")

    def _write(self, out, err):
        if out:
            self._emit(self._stdout or sys.stdout, "".join(out))
        if err:
            self._emit(self._stderr or sys.stderr, "".join(err))

    @staticmethod
    def _emit(stream, text):
        tqdm_module = sys.modules.get("tqdm")
        bars = getattr(getattr(tqdm_module, "tqdm", None), "_instances", None)
        if bars:  # a progress bar is on screen: clear it, print, redraw it
            with tqdm_module.tqdm.external_write_mode(file=stream):
                stream.write(text)
                stream.flush()
        else:
            stream.write(text)
            stream.flush()

    def _arm(self, first):
        """Make sure a summary gets printed when the window of a line held back
        (first seen at ``first``) ends. A timer already armed re-arms for what
        is left when it fires."""
        if self._timer is not None or self._closed:
            return
        delay = max(0.0, first + self.window - self._clock())
        self._timer = threading.Timer(delay + 0.01, self._on_timer)
        self._timer.daemon = True
        self._timer.start()

    def _on_timer(self):
        try:
            out, err = [], []
            with self._lock:
                self._timer = None
                self._expire(self._clock(), out, err)
                self._write(out, err)
                pending = [e.first for e in self._seen.values() if e.count]
                if pending:
                    self._arm(min(pending))
        except Exception:
            pass

    def close(self):
        """Print the summaries still pending; stop the timer."""
        try:
            out, err = [], []
            with self._lock:
                self._closed = True
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._expire(self._clock(), out, err, everything=True)
                self._write(out, err)
        except Exception:
            pass
