"""Prometheus metrics: ``orion.init(metrics_port=...)`` and ``orion head --metrics-port``."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import orion
from orion.observe import Services
from orion.observe.state import HeadView
from orion.transport.zmq_head import HeadServer

from helpers_cluster import LocalCluster, OrionProcess, free_port, wait_until

pytestmark = pytest.mark.timeout(90)


@orion.remote
def square(x):
    return x * x


@orion.remote
def faulty():
    raise RuntimeError("metrics boom")


def scrape(url):
    """``{(metric name, labels as a sorted tuple): value}`` from the text the endpoint serves."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, metric, **labels):
    return samples.get((metric, tuple(sorted(labels.items()))))


def test_counters_move_after_tasks_run(transport):
    port = free_port()
    kwargs = {"transport": "inproc"} if transport == "inproc" else {}
    info = orion.init(num_workers=2, metrics_port=port, **kwargs)
    assert info.metrics_url == f"http://127.0.0.1:{port}/metrics"
    before = scrape(info.metrics_url)
    assert value(before, "orion_nodes", alive="true") == 1
    assert value(before, "orion_tasks_finished_total", name="square") is None

    refs = [square.options(name="square").remote(i) for i in range(7)]
    assert orion.get(refs) == [i * i for i in range(7)]
    bad = [faulty.remote() for _ in range(2)]
    flaky = faulty.options(name="flaky", retry_exceptions=True, max_retries=2).remote()
    for ref in bad + [flaky]:
        with pytest.raises(RuntimeError):
            orion.get(ref)

    def counted():
        samples = scrape(info.metrics_url)
        return samples if value(samples, "orion_tasks_failed_total", name="flaky") == 1 else None

    samples = wait_until(counted, 15)
    assert value(samples, "orion_tasks_submitted_total", name="square") == 7
    assert value(samples, "orion_tasks_finished_total", name="square") == 7
    assert value(samples, "orion_tasks_failed_total", name="square") == 0
    assert value(samples, "orion_tasks_failed_total", name="faulty") == 2
    assert value(samples, "orion_tasks_finished_total", name="faulty") == 0
    assert value(samples, "orion_tasks_retried_total", name="flaky") == 2
    for state in ("pending", "ready", "assigned", "running"):
        assert value(samples, "orion_tasks_by_state", state=state) == 0
    assert value(samples, "orion_nodes", alive="true") == 1
    assert value(samples, "orion_nodes", alive="false") == 0
    assert value(samples, "orion_resources_total", resource="CPU") == 2
    assert value(samples, "orion_object_store_objects") >= 10  # results and failures held at the head
    assert value(samples, "orion_object_store_bytes") > 0
    lateness = value(samples, "orion_heartbeat_lateness_seconds")
    assert lateness is not None and 0 <= lateness < 10
    orion.shutdown()
    with pytest.raises(OSError):  # the endpoint stopped with the cluster
        urllib.request.urlopen(info.metrics_url, timeout=2)


def test_two_heads_in_one_process_have_their_own_metrics():
    servers, services = [], []
    try:
        for _ in range(2):
            server = HeadServer("127.0.0.1", 0).start()
            servers.append(server)
            services.append(Services(HeadView.for_server(server), metrics_port=0))
        for service in services:
            samples = scrape(service.metrics_url)
            assert value(samples, "orion_nodes", alive="true") == 0
        assert services[0].metrics_url != services[1].metrics_url
    finally:
        for service in services:
            service.stop()
        for server in servers:
            server.stop()


def test_metrics_need_a_cluster_that_init_starts():
    with pytest.raises(ValueError, match="metrics_port"):
        orion.init(address="tcp://127.0.0.1:1", metrics_port=free_port())
    with pytest.raises(ValueError, match="port"):
        orion.init(transport="inproc", num_workers=1, metrics_port=-5)
    assert not orion.is_initialized()


def test_orion_head_serves_metrics():
    local = LocalCluster()
    port = free_port()
    try:
        head = local.start_head(extra=["--metrics-port", port])
        head.wait_for_line(rf"Prometheus metrics on http://127\.0\.0\.1:{port}/metrics")
        node_id = local.node_id("m")
        local.start_node(node_id, num_workers=1)
        local.wait_registered([node_id])
        url = f"http://127.0.0.1:{port}/metrics"
        samples = wait_until(lambda: (s := scrape(url)) and value(s, "orion_workers") == 1 and s, 15)
        assert value(samples, "orion_nodes", alive="true") == 1
        orion.init(address=local.address)
        assert orion.get([square.remote(i) for i in range(3)]) == [0, 1, 4]
        samples = wait_until(lambda: (s := scrape(url)) and value(s, "orion_tasks_finished_total",
                                                                  name=square._default_name) == 3 and s, 15)
        assert value(samples, "orion_object_store_bytes") > 0
    finally:
        orion.shutdown()
        local.cleanup()


def test_orion_head_metrics_port_in_use_fails_clearly():
    local = LocalCluster()
    blocker = OrionProcess("head", "--port", free_port(), "--metrics-port", (busy := free_port()))
    try:
        blocker.wait_for_line("Prometheus metrics")
        second = OrionProcess("head", "--port", free_port(), "--metrics-port", busy, name="second head")
        try:
            assert second.wait(15) == 1
            assert "cannot serve metrics" in second.output()
        finally:
            second.close()
    finally:
        blocker.close()
        local.cleanup()
