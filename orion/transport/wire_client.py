"""What every client of a networked cluster shares: values travel serialized.

``SerializingClient`` pickles arguments and ``put`` values into
``(header, buffers)`` (``orion.serialization``), unpickles what it gets, and
pickles each function once per connection. Its subclasses differ only in how
messages reach the head: over a DEALER (``ZmqClient``), over a worker's own
socket (``WorkerClient``), or by direct calls (``EmbeddedClient``).
"""
from __future__ import annotations

import threading

from .. import serialization
from ..client import Client
from . import wire


class SerializingClient(Client):
    def __init__(self, store):
        super().__init__(store)
        self._sent_functions = set()
        self._functions_lock = threading.Lock()

    def _new_functions(self, remote_function):
        """``[[function id, pickled function]]`` the first time, else ``[]``."""
        function_id = remote_function._function_id
        if function_id in self._sent_functions:
            return []
        with self._functions_lock:
            if function_id in self._sent_functions:
                return []
            blob = serialization.dumps_function(remote_function._function,
                                                f"function {remote_function._default_name}")
            self._sent_functions.add(function_id)
            return [[function_id, blob]]

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
