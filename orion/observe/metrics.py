"""Prometheus metrics of a head, served on ``--metrics-port``.

Each head gets its own ``CollectorRegistry`` (several heads in one process,
as in tests, do not collide) holding one custom collector: nothing is counted
per task beyond what the head's task log already keeps; a scrape reads the
head's state under its lock (``HeadView.metrics``) and reports it.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .tasklog import COUNTER_NAMES

_COUNTER_HELP = {
    "submitted": "Tasks submitted to the head, by task name.",
    "finished": "Tasks that finished, by task name.",
    "failed": "Tasks that failed (raised, crashed, lost an input, unschedulable), by task name.",
    "cancelled": "Tasks cancelled, by task name.",
    "retried": "Task retries (after a crash, or a retryable exception), by task name.",
}


class HeadCollector:
    def __init__(self, view):
        self.view = view

    def describe(self):
        return []  # no metric is created at registration time: the head is not read then

    def collect(self):
        state = self.view.metrics()
        by_name = state["by_name"]
        for counter in COUNTER_NAMES:
            family = CounterMetricFamily(f"orion_tasks_{counter}", _COUNTER_HELP[counter], labels=["name"])
            for name, values in sorted(by_name.items()):
                family.add_metric([name], values[counter])
            yield family
        queue = GaugeMetricFamily("orion_tasks_by_state", "Live tasks by state: pending (waiting for inputs), ready "
                                                 "(queued), assigned (queued on a busy worker), running.",
                                  labels=["state"])
        for task_state, count in sorted(state["tasks"].items()):
            queue.add_metric([task_state], count)
        yield queue
        alive = sum(1 for n in state["nodes"] if n["alive"])
        nodes = GaugeMetricFamily("orion_nodes", "Worker nodes known to the head, by liveness.", labels=["alive"])
        nodes.add_metric(["true"], alive)
        nodes.add_metric(["false"], len(state["nodes"]) - alive)
        yield nodes
        yield GaugeMetricFamily("orion_workers", "Worker processes (or threads) of live nodes.",
                                value=sum(n.get("workers", 0) for n in state["nodes"] if n["alive"]))
        total = GaugeMetricFamily("orion_resources_total", "Resources of live nodes.", labels=["resource"])
        free = GaugeMetricFamily("orion_resources_available", "Resources free now on live nodes.",
                                 labels=["resource"])
        totals, available = {}, {}
        for node in state["nodes"]:
            if node["alive"]:
                for key, amount in node["resources"].items():
                    totals[key] = totals.get(key, 0.0) + amount
                for key, amount in node["available"].items():
                    available[key] = available.get(key, 0.0) + amount
        for key in sorted(totals):
            total.add_metric([key], totals[key])
            free.add_metric([key], available.get(key, 0.0))
        yield total
        yield free
        yield GaugeMetricFamily("orion_object_store_bytes", "Bytes of values stored at the head.",
                                value=state["object_store_bytes"])
        yield GaugeMetricFamily("orion_object_store_objects", "Objects (values and failures) stored at the head.",
                                value=state["object_store_objects"])
        yield GaugeMetricFamily("orion_heartbeat_lateness_seconds",
                                "Seconds since the last heartbeat, the largest over live nodes.",
                                value=state["heartbeat_lateness"])


class MetricsServer:
    """``/metrics`` for one head, in a daemon thread (prometheus_client's server)."""

    def __init__(self, view, port, host="127.0.0.1"):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HeadCollector(view))
        self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self.port = self._httpd.server_address[1]

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
