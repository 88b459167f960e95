"""Task options (``@orion.remote(...)`` / ``.options(...)``): validation and defaults.

Bad options fail at the call with a message naming the option, never later.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULTS = {
    "num_cpus": 1.0,
    "resources": None,
    "max_retries": 3,
    "retry_exceptions": False,
    "num_returns": 1,
    "name": None,
}


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Validated options, with the scheduler's resource demand precomputed."""

    num_cpus: float = 1.0
    resources: dict = field(default_factory=dict)
    max_retries: int = 3
    retry_exceptions: object = False  # False, True or a tuple of exception classes
    num_returns: int = 1
    name: str | None = None
    demand: dict = field(default_factory=lambda: {"CPU": 1.0})


def validate(options, base=None):
    """Merge ``options`` over ``base`` (a TaskOptions) and check every value."""
    merged = dict(DEFAULTS)
    if base is not None:
        merged.update({k: getattr(base, k) for k in DEFAULTS})
    for key, value in options.items():
        if key not in DEFAULTS:
            raise ValueError(f"unknown option {key!r}; valid options are {sorted(DEFAULTS)}")
        merged[key] = value

    num_cpus = merged["num_cpus"]
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus < 0:
        raise ValueError(f"option 'num_cpus' must be a number >= 0, got {num_cpus!r}")
    resources = merged["resources"] or {}
    if not isinstance(resources, dict):
        raise ValueError(f"option 'resources' must be a dict of name -> amount, got {resources!r}")
    for name, amount in resources.items():
        if not isinstance(name, str) or isinstance(amount, bool) or not isinstance(amount, (int, float)) \
                or amount < 0:
            raise ValueError(f"option 'resources' must map names to amounts >= 0, got {name!r}: {amount!r}")
        if name == "CPU":
            raise ValueError("option 'resources' must not name 'CPU'; use num_cpus")
    max_retries = merged["max_retries"]
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < -1:
        raise ValueError(f"option 'max_retries' must be an int >= 0 (or -1 for no limit), got {max_retries!r}")
    retry_exceptions = merged["retry_exceptions"]
    if isinstance(retry_exceptions, (list, tuple)):
        for cls in retry_exceptions:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise ValueError(f"option 'retry_exceptions' must be a bool or a list of exception "
                                 f"classes, got {cls!r} in the list")
        retry_exceptions = tuple(retry_exceptions)
    elif not isinstance(retry_exceptions, bool):
        raise ValueError(f"option 'retry_exceptions' must be a bool or a list of exception classes, "
                         f"got {retry_exceptions!r}")
    num_returns = merged["num_returns"]
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"option 'num_returns' must be an int >= 1, got {num_returns!r}")
    name = merged["name"]
    if name is not None and not isinstance(name, str):
        raise ValueError(f"option 'name' must be a str, got {name!r}")

    demand = {"CPU": float(num_cpus)} if num_cpus else {}
    demand.update({k: float(v) for k, v in resources.items() if v})
    return TaskOptions(float(num_cpus), dict(resources), max_retries, retry_exceptions, num_returns, name,
                       demand)


def retryable(retry_exceptions, exc):
    """Whether ``exc`` should be retried under the task's ``retry_exceptions``."""
    if retry_exceptions is True:
        return isinstance(exc, Exception)
    if retry_exceptions:
        return isinstance(exc, retry_exceptions)
    return False
