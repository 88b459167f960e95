"""The transport interface: how the head's commands reach workers and clients.

The ``Head`` (``orion/head.py``) runs the scheduler and the object table; it
knows peers only by id (worker ids, node ids, client peer ids) and hands
plain data to a ``HeadTransport``. The in-process transport turns these calls
into queue puts to worker threads; the ZeroMQ transport turns them into
batched msgpack messages on a ROUTER socket. Events travel the other way: the
transport calls the ``Head`` methods (``submit``, ``task_done``, ...) from the
one thread (or under the one lock) that owns the head.
"""
from __future__ import annotations

# Tasks a busy worker may have queued behind its current one, at most; how
# many it really gets is its task's run time's worth of PIPELINE_BUDGET
# (Scheduler._pipeline_limit), so only tiny tasks go this deep. A worker
# reports after running its queue dry, so a deeper queue is fewer bubbles and
# fewer reports per task. No-op tasks/s, embedded cluster, 2 cores: depth 1
# ~12k, 2 ~15k, 8 ~24k; in fresh processes, medians of 5-6 A/B runs: 16
# ~24.3k, 32 ~25.2-26.3k, 64 ~27.1-27.3k (tree reduction 19.0k, 18.7-19.6k,
# 20.1-20.2k). Both runtimes' workers pipeline this deep.
PIPELINE_DEPTH = 64


class HeadTransport:
    def dispatch(self, worker_id, spec, inputs, function, nested=False):
        """Run task ``spec`` on ``worker_id``; ``inputs`` maps each dependency
        id to its stored value; ``function`` is what the client registered.
        ``nested``: run it inside the worker's waiting ``get`` (scheduler's
        "Helping"; only for workers that said what they wait for)."""
        raise NotImplementedError

    def interrupt(self, worker_id, task_id, force):
        """Cancel a running task: KeyboardInterrupt in it, or kill the worker."""
        raise NotImplementedError

    def recall(self, worker_id, task_ids):
        """Ask the worker to send back those of ``task_ids`` (queued behind the
        task it runs) that it has not started: ``task_rejected`` for each.
        Only pipelining nodes queue tasks on workers."""
        raise NotImplementedError

    def start_worker(self, node_id):
        """Ask ``node_id`` for one more worker (it joins with ``worker_joined``)."""
        raise NotImplementedError

    def stop_worker(self, worker_id):
        """Retire an idle worker."""
        raise NotImplementedError

    def deliver(self, peer_id, object_id, entry):
        """``object_id`` is now stored (a value, ``Failed`` or ``Remote``); ``peer_id`` owns
        or asked for it."""
        raise NotImplementedError

    def free(self, holder_id, object_ids):
        """Tell the node (or driver) ``holder_id`` to delete its copies of these
        large objects. Runtimes without node stores have nothing to do."""

    def flush(self):
        """End of one batch of head work: send whatever was buffered."""
