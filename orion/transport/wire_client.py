"""What every client of a networked cluster shares: values travel serialized.

``SerializingClient`` pickles arguments and ``put`` values into
``(header, buffers)`` (``orion.serialization``), unpickles what it gets, and
pickles each function once per connection. Its subclasses differ only in how
messages reach the head: over a DEALER (``ZmqClient``), over a worker's own
socket (``WorkerClient``), or by direct calls (``EmbeddedClient``).

A large value arrives as a ``Remote`` entry (where it lives); the first use
maps or fetches it (``self.objects``, an ``orion.store.access.ObjectAccess``)
and keeps the result in the local store. If no holder can hand it over, the
head hears of it (``lost``) and answers with a new copy's whereabouts, the
rebuilt value, or the failure.
"""
from __future__ import annotations

import threading
import time

from .. import serialization
from ..client import Client
from ..errors import GetTimeoutError
from ..store.access import INLINE_MAX, ObjectUnavailable, serialized_size
from . import wire


class SerializingClient(Client):
    inline_max = INLINE_MAX  # larger put values stay out of messages (see put_large)

    def __init__(self, store):
        super().__init__(store)
        self._sent_functions = set()
        self._functions_lock = threading.Lock()
        self.objects = None  # ObjectAccess, set by subclasses that can read node stores

    # ------------------------------------------------------- large values
    def _send_put(self, object_id, value):
        header, buffers = value
        if serialized_size(header, buffers) > self.inline_max and self._put_large(object_id, value):
            return
        self._put_inline(object_id, value)

    def _put_inline(self, object_id, value):
        raise NotImplementedError

    def _put_large(self, object_id, value):
        """Keep a large put value out of the head's messages; False: cannot here."""
        return False

    def _resolve_remote(self, object_id, remote, deadline):
        if self.objects is None:
            return super()._resolve_remote(object_id, remote, deadline)
        try:
            header, buffers, keep = self.objects.read(object_id, remote)
        except ObjectUnavailable as exc:
            # Ask the head again: it drops the holders that failed us and sends
            # another copy's whereabouts, the rebuilt value, or the failure.
            self.store.delete(object_id)
            self._send_lost(object_id, exc.failed)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._wait_for_again(object_id, timeout):
                raise GetTimeoutError(f"get timed out while object {object_id} was being fetched again "
                                      f"({exc})") from None
            return self.store.lookup(object_id)
        if keep is not None:
            self._keep_copy(object_id, keep)  # (a nested get of a value from another node)
        value = (header, buffers)
        if not self.objects.read_as_copy(remote):
            self.store.put(object_id, value)  # later gets in this process use it as it is
        return value

    def _wait_for_again(self, object_id, timeout):
        return self._wait_for([object_id], None, timeout)

    def _send_lost(self, object_id, holder_ids):
        raise NotImplementedError

    def _keep_copy(self, object_id, keep):
        """Write a fetched value into our node's store and report the copy
        (only worker processes keep copies)."""

    def _new_functions(self, remote_function):
        """``[[function id, pickled function]]`` until a submit carrying it has
        gone (``_functions_sent``), else ``[]``. Marked only once it has gone:
        a thread that skipped it must not reach the head before the submit
        that carries it (another thread's, in flight), or its task would name
        a function the head does not have. Two threads may both send it."""
        function_id = remote_function._function_id
        if function_id in self._sent_functions:
            return []
        with self._functions_lock:  # (pickled by one thread at a time)
            blob = serialization.dumps_function(remote_function._function,
                                                f"function {remote_function._default_name}")
        return [[function_id, blob]]

    def _functions_sent(self, functions):
        """The submit carrying these (``_new_functions``) is out, in order
        before any later one."""
        if functions:
            self._sent_functions.update(function_id for function_id, _ in functions)

    def _submit_message(self, specs, remote_function):
        """Body and buffers of a ``submit`` message for ``specs``."""
        records, frames = [], []
        for spec in specs:
            header, buffers = spec.payload.args
            records.append(wire.encode_submit_record(spec, header, len(buffers)))
            frames.extend(buffers)
        return [self._new_functions(remote_function), records], frames

    def _encode_args(self, args, kwargs, task_name):
        return serialization.dumps_args(args, kwargs, task_name)

    def _encode_value(self, value):
        return serialization.dumps(value, "the value given to put")

    def _decode_value(self, entry):
        header, buffers = entry
        return serialization.loads(header, buffers)

    def _decode_failure_payload(self, payload):
        return serialization.loads(payload)
