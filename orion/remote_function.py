"""``@orion.remote``: remote functions and their ``.remote`` / ``.options`` calls."""
from __future__ import annotations

import functools
import uuid

from .api import _current_client
from .options import validate


class RemoteFunction:
    def __init__(self, function, options, function_id=None):
        if not callable(function):
            raise TypeError(f"orion.remote needs a function, got {type(function).__name__}: {function!r}")
        self._function = function
        self._options = options
        # One id per function, kept when the RemoteFunction travels inside a
        # task, so that workers cache the function body by id.
        self._function_id = function_id or uuid.uuid4().hex
        self._default_name = getattr(function, "__qualname__", None) or repr(function)
        functools.update_wrapper(self, function, updated=())

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self._default_name} cannot be called directly; "
                        f"use {self._default_name}.remote(...) to run it as a task")

    def remote(self, *args, **kwargs):
        return _current_client().submit(self, args, kwargs, self._options)

    def options(self, **options):
        """A copy with ``options`` overriding the decorator's."""
        return RemoteFunction(self._function, validate(options, self._options), self._function_id)

    def __reduce__(self):
        return RemoteFunction, (self._function, self._options, self._function_id)

    def __repr__(self):
        return f"<orion remote function {self._default_name}>"


def remote(*args, **options):
    """``@orion.remote`` or ``@orion.remote(num_cpus=..., ...)``."""
    if len(args) == 1 and not options and callable(args[0]):
        return RemoteFunction(args[0], validate({}))
    if args:
        raise TypeError(f"orion.remote takes a function, or keyword options only; got {args[0]!r}")
    validated = validate(options)

    def decorate(function):
        return RemoteFunction(function, validated)

    return decorate
