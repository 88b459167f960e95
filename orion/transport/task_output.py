"""Capturing what a task prints, inside a worker process.

While a task runs, the worker swaps ``sys.stdout`` and ``sys.stderr`` for two
``LineWriter``s (``TaskOutput.start``/``stop``). They cut what is written
into whole lines and keep them as ``[task id, task name, stream, line]``
records (the body of a ``logs`` message, worker -> head). The worker sends
them when the task ends, when it blocks in ``get``, and, while it runs, at a
write that finds more than ``LINE_LIMIT`` lines buffered or the last send
more than ``FLUSH_INTERVAL`` seconds old (so a task's first line goes at
once, and long tasks stream). A task that prints nothing pays for the swap
of two attributes and nothing else.

The worker's root logger writes to whatever ``sys.stderr`` is at the time
(``install_logging``), so ``logging`` inside a task is captured too.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time

LINE_LIMIT = 64  # buffered lines that make the worker send them at once
FLUSH_INTERVAL = 0.2  # seconds: a line written later than this after the last send goes at once
MAX_LINE = 16 * 1024  # longer lines travel in pieces of this many characters


class LineWriter(io.TextIOBase):
    """A text stream that turns writes into whole lines for a ``TaskOutput``."""

    def __init__(self, output, stream):
        super().__init__()
        self._output = output
        self._stream = stream  # "stdout" or "stderr"
        self._partial = ""

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "replace"

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        """The real stream's descriptor (what is written there bypasses the capture),
        so that code handing ``sys.stdout`` to a subprocess or faulthandler still works."""
        real = self._output.real(self._stream)
        if real is None:
            raise io.UnsupportedOperation("fileno")
        return real.fileno()

    @property
    def buffer(self):
        return _BytesWriter(self)

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if "\n" not in text:
            if text:
                partial = self._partial + text
                if "\r" in text:
                    partial = _overwrite(partial)
                if len(partial) > MAX_LINE:  # send it in pieces; the rest waits for its end
                    cut = (len(partial) - 1) // MAX_LINE * MAX_LINE
                    self._output.add(self._stream, [partial[i:i + MAX_LINE] for i in range(0, cut, MAX_LINE)])
                    partial = partial[cut:]
                self._partial = partial
            return len(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        if "\r" in text:
            lines = [_overwrite(line) for line in lines]
            self._partial = _overwrite(self._partial)
        if len(text) > MAX_LINE:
            lines = [line[i:i + MAX_LINE] for line in lines for i in range(0, len(line) or 1, MAX_LINE)]
        self._output.add(self._stream, lines)
        return len(text)

    def flush(self):
        pass

    def finish(self):
        """The task ended: an unterminated last line still counts as a line."""
        if self._partial:
            line, self._partial = self._partial, ""
            self._output.add(self._stream, [line], flush=False)


class _BytesWriter:
    """``sys.stdout.buffer`` of a ``LineWriter``: bytes are decoded as UTF-8."""

    def __init__(self, writer):
        self._writer = writer

    def write(self, data):
        self._writer.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self):
        pass


def _overwrite(line):
    """What a terminal shows of ``line``: the text after its last carriage return
    (progress bars redraw themselves that way); a trailing one (CRLF) is dropped."""
    if "\r" not in line:
        return line
    return line.rstrip("\r").rpartition("\r")[2]


class TaskOutput:
    """The lines of the running task; ``on_full`` is called when they should go now."""

    def __init__(self, on_full=None, clock=time.monotonic):
        self.records = []
        self.task_id = None
        self.task_name = None
        self.on_full = on_full
        self._clock = clock
        self._last_flush = 0.0
        self._lock = threading.Lock()
        self._saved = None
        self.stdout = LineWriter(self, "stdout")
        self.stderr = LineWriter(self, "stderr")

    @property
    def active(self):
        return self._saved is not None

    def real(self, stream):
        """The stream the capture replaced (None when no task runs)."""
        saved = self._saved
        if saved is None:
            return None
        return saved[1] if stream == "stderr" else saved[0]

    def start(self, task_id, task_name):
        self.task_id = task_id
        self.task_name = task_name
        self._last_flush = 0.0  # a task's first line goes out at once
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = self.stdout
        sys.stderr = self.stderr

    def stop(self):
        """Put the real streams back; returns whether lines wait to be sent."""
        saved = self._saved
        if saved is not None:
            self._saved = None
            sys.stdout, sys.stderr = saved
        if self.stdout._partial:
            self.stdout.finish()
        if self.stderr._partial:
            self.stderr.finish()
        return bool(self.records)

    def add(self, stream, lines, flush=True):
        task_id, name = self.task_id, self.task_name
        with self._lock:
            records = self.records
            for line in lines:
                records.append([task_id, name, stream, line])
            count = len(records)
        if flush and self.on_full is not None and (
                count > LINE_LIMIT or self._clock() - self._last_flush > FLUSH_INTERVAL):
            self.on_full()

    def take(self):
        """The buffered records (and forget them)."""
        with self._lock:
            records, self.records = self.records, []
        self._last_flush = self._clock()
        return records


def _real_streams_in_child():
    """A process forked inside a task (multiprocessing...) cannot send our lines:
    it writes to the real streams instead."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, LineWriter):
            real = stream._output.real(name)
            if real is not None:
                setattr(sys, name, real)


os.register_at_fork(after_in_child=_real_streams_in_child)


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (a task's capture while one runs)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _WorkerFormatter(logging.Formatter):
    """Inside a task, the usual ``LEVEL:logger:message`` (the driver adds the
    task's prefix); outside, lines say which worker wrote them."""

    def __init__(self, worker_id):
        super().__init__(f"[worker {worker_id}] %(levelname)s %(message)s")
        self._in_task = logging.Formatter("%(levelname)s:%(name)s:%(message)s")

    def format(self, record):
        if isinstance(sys.stderr, LineWriter):
            return self._in_task.format(record)
        return super().format(record)


def install_logging(worker_id, level=logging.WARNING):
    """The worker's root logger: to the current ``sys.stderr``, so tasks' logging is captured."""
    handler = _StderrHandler()
    handler.setFormatter(_WorkerFormatter(worker_id))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
