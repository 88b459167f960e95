"""The module-level API: ``init``, ``shutdown``, ``get``, ``wait``, ``put``, ``cancel``...

One client per process (like Ray): ``init`` creates it, ``shutdown`` closes it.
Inside a worker process the worker installs its own client here.
"""
from __future__ import annotations

import os
import re
import threading

from . import gc_tuning, security
from .errors import OrionError

_lock = threading.Lock()
_client = None
_services = None  # the metrics / dashboard servers init started (orion.observe)

_ADDRESS = re.compile(r"^tcp://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


def check_address(address):
    """Return ``address`` if it is ``tcp://host:port``; else raise ValueError."""
    if not isinstance(address, str):
        raise ValueError(f"address must be a string 'tcp://HOST:PORT', got {address!r}")
    match = _ADDRESS.match(address)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"address must look like 'tcp://HOST:PORT' (e.g. tcp://127.0.0.1:6380), got {address!r}")
    return address


class ClusterInfo:
    """What ``init`` returns; a context manager that calls ``shutdown``."""

    def __init__(self, address, metrics_url=None, dashboard_url=None):
        self.address = address
        self.metrics_url = metrics_url  # http://HOST:PORT/metrics with init(metrics_port=...)
        self.dashboard_url = dashboard_url  # http://HOST:PORT/ with init(dashboard_port=...)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutdown()

    def __repr__(self):
        return f"ClusterInfo(address={self.address!r})"


def init(address=None, *, num_workers=None, transport="zmq", resources=None, keys=None, log_to_driver=True,
         **settings):
    global _client, _services
    if transport not in ("zmq", "inproc"):
        raise ValueError(f"transport must be 'zmq' or 'inproc', got {transport!r}")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 1):
        raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
    if resources is not None:
        if not isinstance(resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in resources.items()):
            raise ValueError(f"resources must be a dict of name -> amount >= 0, got {resources!r}")
        if "CPU" in resources:
            raise ValueError("resources must not name 'CPU': it is the number of workers")
    if address is None and transport == "zmq":
        address = os.environ.get("ORION_ADDRESS") or None
    if address is not None:
        check_address(address)
    observe = _observe_settings(settings, address)
    with _lock:
        if _client is not None:
            raise RuntimeError("orion.init was already called; call orion.shutdown() first")
        workers = num_workers or os.cpu_count() or 1
        if transport == "inproc":
            from .transport.inproc import InprocClient

            client = InprocClient(workers, resources, **settings)
        elif address is not None:
            from .transport.zmq_client import connect

            client = connect(address, keys=security.load(keys), log_to_driver=bool(log_to_driver), **settings)
        else:
            from .transport.embedded import start_embedded

            client = start_embedded(workers, resources, keys=security.load(keys),
                                    log_to_driver=bool(log_to_driver), **settings)
        services = _start_services(client, observe)
        _client, _services = client, services
        gc_tuning.raise_threshold()
    return ClusterInfo(client.address, services and services.metrics_url, services and services.dashboard_url)


def _observe_settings(settings, address):
    """``metrics_port``, ``dashboard_port`` (and their ``*_host``) out of ``settings``."""
    from .observe import split_settings

    observe = split_settings(settings)
    if address is not None and any(observe.get(k) is not None for k in ("metrics_port", "dashboard_port")):
        raise ValueError("metrics_port and dashboard_port serve a cluster that init starts; a running head "
                         "takes them as `orion head --metrics-port/--dashboard-port`")
    return observe


def _start_services(client, observe):
    if observe.get("metrics_port") is None and observe.get("dashboard_port") is None:
        return None
    from .observe import Services
    from .observe.state import HeadView

    try:
        server = getattr(client, "server", None)
        view = HeadView.for_server(server) if server is not None else HeadView.for_inproc(client.runtime)
        services = Services(view, **observe)
    except BaseException:
        client.shutdown()
        raise
    services.warn_if_exposed()
    return services


def shutdown():
    global _client, _services
    with _lock:
        client, _client = _client, None
        services, _services = _services, None
    if services is not None:
        services.stop()
    if client is not None:
        client.shutdown()
        gc_tuning.restore()


def timeline(path=None):
    """Every task the cluster ran (the last 100,000), as a Chrome trace: open the
    file in Perfetto (ui.perfetto.dev) or chrome://tracing. Writes ``path`` and
    returns it; with no path, returns the trace (a dict)."""
    from .observe.timeline import chrome_trace, write_trace

    records = _current_client().timeline_records()
    if path is None:
        return chrome_trace(records)
    return write_trace(records, path)


def is_initialized():
    return _client is not None


def _current_client():
    client = _client
    if client is None:
        raise OrionError("Orion is not initialized (or was shut down): call orion.init() first")
    return client


def _install_client(client):
    """Used by worker processes: their tasks talk to the cluster through ``client``."""
    global _client
    _client = client


def get(refs, *, timeout=None, progress=False):
    return _current_client().get(refs, timeout, progress)


def progress(refs, *, desc=None, timeout=None):
    """Yield the values of ``refs`` as their tasks finish, in completion order,
    with a progress bar (done/total, rate, ETA) when stderr is a terminal."""
    from .progress_bar import as_completed

    return as_completed(_current_client(), refs, desc=desc, timeout=timeout)


def wait(refs, *, num_returns=1, timeout=None):
    return _current_client().wait(refs, num_returns, timeout)


def put(value):
    return _current_client().put(value)


def cancel(ref, *, force=False):
    return _current_client().cancel(ref, force)


def nodes():
    return _current_client().nodes()


def _sum_resources(key):
    totals = {"CPU": 0.0}
    for node in nodes():
        if node["alive"]:
            for name, amount in node[key].items():
                totals[name] = totals.get(name, 0.0) + amount
    return totals


def cluster_resources():
    return _sum_resources("resources")


def available_resources():
    return _sum_resources("available")
