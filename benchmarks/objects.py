"""One object-store benchmark session: large values, on one node and between two.

    python benchmarks/objects.py orion-zmq|orion-inproc|ray|dask [--workers 2]

Prints one JSON object (like ``workloads.py``); ``benchmarks/run.py`` runs it in
a fresh process per repetition. Every workload moves a 100 MiB float64 numpy
array (``np.ones(100 * 2**20 // 8)``); the tasks read it with
``arr[::512].sum()``, one element per 4 KiB page, so every page is touched (a
reader that only maps the value without faulting it in gets no free ride) and
the arithmetic costs nothing. Throughput is in GB/s with GB = 2**30 bytes (as
``workloads.py``'s MB = 2**20), so 100 MiB in one second is 0.098 GB/s.

* ``put_read_gb_per_s``: ``put`` the array, then a task that reads it, then
  ``get`` its small result: 100 MiB / time(put + submit + get).
* ``return_gb_per_s``: a task returns the array to the driver, which reads
  it (``arr[::512].sum()``, so a lazily mapped value pays for its page faults
  inside the clock): 100 MiB / time(submit + get + read). The task returns an
  array its worker process built in the warm-up, so only moving the value is
  timed, not ``np.ones``.
* ``two_nodes_gb_per_s``: a real two-node cluster on loopback. A producer
  pinned to node A (custom resource ``A``) returns the array; once it is done
  (``wait``), a consumer pinned to node B (resource ``B``) reads it and
  returns the checksum: 100 MiB / time(consumer submit + get). For Orion the
  cluster is ``orion head`` plus two ``orion worker --num-workers 1
  --resources '{"A": 1}'`` / ``'{"B": 1}'`` subprocesses (also for the
  ``orion-inproc`` column, which has no nodes of its own); for Ray,
  ``ray.cluster_utils.Cluster`` with two extra nodes; for Dask, two worker
  processes of a ``LocalCluster`` and ``workers=`` pinning.

Each workload runs once unmeasured (worker processes started, code shipped,
buffers allocated), then once measured. Without numpy the session prints
``{"objects_skipped": "numpy is not installed"}`` and measures nothing; when
the two-node cluster cannot start, ``two_nodes_error`` says why (``run.py``
prints n/a and the reason).
"""
from __future__ import annotations

import time

# run.py runs this file as a script: its folder is on sys.path.
from cluster import SubprocessCluster

SIZE = 100 * 2**20                  # bytes in the array
ELEMENTS = SIZE // 8                # float64
STRIDE = 512                        # 512 * 8 bytes = one element per 4 KiB page
CHECKSUM = float(len(range(0, ELEMENTS, STRIDE)))
GB = 2**30


def checksum(arr):
    """Touch every page of ``arr`` and return a small float."""
    return float(arr[::STRIDE].sum())


def big_array():
    """The 100 MiB array, built once per worker process and kept on the numpy module
    (a module global would not survive: functions defined in ``__main__`` travel by
    value, with a fresh copy of their globals)."""
    import numpy as np

    arr = getattr(np, "_orion_benchmark_array", None)
    if arr is None:
        arr = np._orion_benchmark_array = np.ones(ELEMENTS)
    return arr


def warm(seconds):
    """Build this worker's array, and stay busy so that concurrent calls spread over workers."""
    big_array()
    time.sleep(seconds)


def produce():
    """A fresh 100 MiB array (producer on node A: its value is new each time)."""
    import numpy as np

    return np.ones(ELEMENTS)


def gb_per_s(seconds):
    return SIZE / GB / seconds


# -- the systems --------------------------------------------------------------------------------

class Orion:
    def __init__(self, transport, workers):
        import orion

        self.orion = orion
        self.transport = transport
        orion.init(transport=transport, num_workers=workers)
        self._bind()

    def _bind(self):
        self.checksum = self.orion.remote(checksum)
        self.big_array = self.orion.remote(big_array)
        self.warm = self.orion.remote(warm)
        self.produce = self.orion.remote(produce)
        self.get, self.put, self.wait = self.orion.get, self.orion.put, self.orion.wait

    def submit(self, fn, *args):
        return fn.remote(*args)

    def submit_on(self, node, fn, *args):
        return fn.options(resources={node: 1}).remote(*args)

    def close(self):
        self.orion.shutdown()

    def two_nodes(self):
        # The in-process runtime has no nodes; the two-node row is the orion-zmq column's.
        return OrionTwoNodes() if self.transport == "zmq" else None


class OrionTwoNodes(Orion):
    """``orion head`` and two ``orion worker`` nodes (resources A and B) as subprocesses."""

    def __init__(self):
        import orion

        self.orion = orion
        self.cluster = SubprocessCluster([
            {"num_workers": 1, "node_id": f"bench-{name}", "resources": {name: 1}}
            for name in ("A", "B")])
        try:
            self.cluster.join(orion)
        except BaseException:
            self.close()
            raise
        self._bind()

    def close(self):
        try:
            if self.orion.is_initialized():
                self.orion.shutdown()
        finally:
            self.cluster.close()


class Ray:
    def __init__(self, transport, workers):
        import ray

        self.ray = ray
        self.cluster = None
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        self._bind()

    def _bind(self):
        self.checksum = self.ray.remote(checksum)
        self.big_array = self.ray.remote(big_array)
        self.warm = self.ray.remote(warm)
        self.produce = self.ray.remote(produce)
        self.get, self.put = self.ray.get, self.ray.put

    def wait(self, refs, num_returns=1, timeout=None):
        # fetch_local=False: waiting must not pull the value to the driver's node as well.
        return self.ray.wait(refs, num_returns=num_returns, timeout=timeout, fetch_local=False)

    def submit(self, fn, *args):
        return fn.remote(*args)

    def submit_on(self, node, fn, *args):
        return fn.options(resources={node: 1}).remote(*args)

    def close(self):
        self.ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()

    def two_nodes(self):
        from ray.cluster_utils import Cluster

        two = Ray.__new__(Ray)
        two.ray = self.ray
        # A head that runs no tasks (the driver attaches to it) and two one-CPU nodes.
        node_args = {"num_cpus": 0, "object_store_memory": 10**9, "include_dashboard": False}
        two.cluster = Cluster(initialize_head=True, head_node_args=node_args)
        try:
            for name in ("A", "B"):
                two.cluster.add_node(num_cpus=1, resources={name: 1}, object_store_memory=10**9)
            self.ray.init(address=two.cluster.address, log_to_driver=False)
            two.cluster.wait_for_nodes()
        except BaseException:
            two.close()
            raise
        two._bind()
        return two


class Dask:
    def __init__(self, transport, workers):
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)
        self.checksum, self.big_array, self.produce, self.warm = checksum, big_array, produce, warm
        self.get = self.client.gather
        self.put = lambda value: self.client.scatter(value)
        self.nodes = {}

    def wait(self, refs, num_returns=1, timeout=None):
        from dask.distributed import wait

        done, not_done = wait(refs, timeout=timeout)
        return list(done), list(not_done)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def submit_on(self, node, fn, *args):
        return self.client.submit(fn, *args, pure=False, workers=[self.nodes[node]])

    def close(self):
        self.client.close()
        self.cluster.close()

    def two_nodes(self):
        two = Dask(None, 2)
        workers = sorted(two.client.scheduler_info()["workers"])
        two.nodes = {"A": workers[0], "B": workers[1]}
        return two


SYSTEMS = {
    "orion-zmq": lambda w: Orion("zmq", w),
    "orion-inproc": lambda w: Orion("inproc", w),
    "ray": lambda w: Ray(None, w),
    "dask": lambda w: Dask(None, w),
}


# -- the workloads ------------------------------------------------------------------------------

def put_read(s, arr):
    t = time.perf_counter()
    ref = s.put(arr)
    value = s.get(s.submit(s.checksum, ref))
    elapsed = time.perf_counter() - t
    assert value == CHECKSUM, value
    return elapsed


def returned(s):
    t = time.perf_counter()
    value = s.get(s.submit(s.big_array))
    total = checksum(value)
    elapsed = time.perf_counter() - t
    assert value.nbytes == SIZE and total == CHECKSUM, total
    return elapsed


def between_nodes(s):
    produced = s.submit_on("A", s.produce)
    ready, _ = s.wait([produced], num_returns=1, timeout=120)
    assert ready, "the producer did not finish in 120 s"
    t = time.perf_counter()
    value = s.get(s.submit_on("B", s.checksum, produced))
    elapsed = time.perf_counter() - t
    assert value == CHECKSUM, value
    return elapsed


def measure(system_name, workers):
    try:
        import numpy as np
    except ImportError:
        return {"objects_skipped": "numpy is not installed"}
    results = {}
    arr = np.ones(ELEMENTS)
    s = SYSTEMS[system_name](workers)
    try:
        put_read(s, arr)                                    # warm-up
        results["put_read_gb_per_s"] = gb_per_s(put_read(s, arr))
        # Every worker builds its array first, so the measured task only returns it.
        s.get([s.submit(s.warm, 0.3) for _ in range(2 * workers)])
        returned(s)                                         # warm-up
        results["return_gb_per_s"] = gb_per_s(returned(s))
    finally:
        s.close()
    try:
        two = s.two_nodes()
    except Exception as e:              # e.g. Ray's test cluster cannot start here: report n/a
        results["two_nodes_error"] = f"{type(e).__name__}: {e}"[:300]
        return results
    if two is None:
        return results
    try:
        between_nodes(two)                                  # warm-up
        results["two_nodes_gb_per_s"] = gb_per_s(between_nodes(two))
    finally:
        two.close()
    return results


if __name__ == "__main__":
    from workloads import run_cli

    run_cli(SYSTEMS, measure)
