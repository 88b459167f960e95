"""Seeing what the cluster does: task timeline, Prometheus metrics, web dashboard.

* ``tasklog``: what the head records per task (a few floats), and per-name counters;
* ``timeline``: those records as a Chrome trace (``orion.timeline``);
* ``state``: snapshots of a head for ``orion status``, the metrics and the dashboard;
* ``metrics``: ``/metrics`` on ``--metrics-port`` (prometheus_client);
* ``dashboard``: a static page and ``/api/state`` on ``--dashboard-port``.

``Services`` starts the HTTP endpoints a head was asked for and stops them.
"""
from __future__ import annotations

import logging

log = logging.getLogger("orion.observe")

DEFAULT_HOST = "127.0.0.1"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
SETTINGS = ("metrics_port", "metrics_host", "dashboard_port", "dashboard_host")


def _check_port(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise ValueError(f"{what} must be a port number (0 picks a free one), got {value!r}")
    return value


class Services:
    """The metrics and dashboard servers of one head (either may be off)."""

    def __init__(self, view, *, metrics_port=None, metrics_host=DEFAULT_HOST, dashboard_port=None,
                 dashboard_host=DEFAULT_HOST):
        self.metrics = None
        self.dashboard = None
        _check_port(metrics_port, "metrics_port")
        _check_port(dashboard_port, "dashboard_port")
        try:
            if metrics_port is not None:
                from .metrics import MetricsServer

                self.metrics = MetricsServer(view, metrics_port, metrics_host or DEFAULT_HOST)
            if dashboard_port is not None:
                from .dashboard import DashboardServer

                self.dashboard = DashboardServer(view, dashboard_port, dashboard_host or DEFAULT_HOST)
        except BaseException:
            self.stop()
            raise

    def warn_if_exposed(self):
        """Log a warning for an endpoint bound beyond loopback (they have no authentication)."""
        for server, what in ((self.metrics, "metrics"), (self.dashboard, "dashboard")):
            if server is not None and server.host not in LOOPBACK:
                log.warning("the %s on %s has no authentication: whoever reaches it sees task names, "
                            "nodes and error messages", what, server.url)

    @property
    def metrics_url(self):
        return self.metrics.url if self.metrics else None

    @property
    def dashboard_url(self):
        return self.dashboard.url if self.dashboard else None

    def stop(self):
        for server in (self.dashboard, self.metrics):
            if server is not None:
                server.stop()
        self.metrics = self.dashboard = None


def split_settings(settings):
    """Take the observability settings out of ``orion.init``'s keyword arguments."""
    return {key: settings.pop(key) for key in SETTINGS if key in settings}
