"""The scheduler's placement indexes make exactly the decisions of a full scan.

``Scheduler`` keeps indexes of the nodes that can take a task now and of the
busy workers that can take one more (``state.py``, "Indexes"), so a dispatch
does not look at every node. ``ScanningScheduler`` below is the same
scheduler with the placement it had before those indexes: a scan of every
node (and every worker, for pipelining) per decision, which is easy to check
by eye. ``Twin`` feeds every event to both and requires identical commands,
in the same order, event after event:

* under the randomized reference-model simulation of
  ``test_scheduler_random.py`` (1 to 3 nodes, every event kind, both
  policies, pipelining, locality), so its invariants and outcome checks hold
  too;
* under a fuzzer with many heterogeneous nodes (up to 40, mixed CPU/GPU
  totals, worker counts and pipeline depths), where ties, registration
  order, round-robin turns, StartWorker choices and pipelining's grouping by
  worker count matter most.
"""
from __future__ import annotations

import random

import pytest

from orion.scheduler import (Dispatch, InputLost, NodeJoined, NodeLost, ObjectLocated, ObjectPut, ObjectsReleased,
                             Scheduler, StartWorker, StopWorker, TaskErrored, TaskFinished, TaskRejected, TaskSpec,
                             TaskSubmitted, WorkerBlocked, WorkerJoined, WorkerLost, WorkerUnblocked, Failure)
from orion.scheduler import commands as cmd
from orion.scheduler.placement import most_local
from orion.scheduler.state import READY, fits

from test_scheduler_random import Sim

pytestmark = pytest.mark.timeout(120)


class ScanningScheduler(Scheduler):
    """Placement as a scan of every node and worker per decision (the
    scheduler's code before its indexes, kept verbatim as the oracle)."""

    def _node_changed(self, node):
        pass

    def _worker_changed(self, worker):
        pass

    def _schedule(self):
        if not self._ready:
            return
        tasks = self._tasks
        emptied = []
        for shape, queue in self._ready.items():
            while queue:
                task = tasks.get(queue[0])
                if task is None or task.state != READY:
                    queue.popleft()
                    continue
                node = self._scan_node(task.spec)
                if node is None:
                    worker = self._scan_pipelined(task.spec.demand, len(queue))
                    if worker is None:
                        break
                    queue.popleft()
                    self._assign(task, worker)
                    continue
                queue.popleft()
                self._start(task, node)
            if not queue:
                emptied.append(shape)
        for shape in emptied:
            del self._ready[shape]

    def _scan_node(self, spec):
        demand = spec.demand
        candidates = []
        short_of_workers = None
        for node in self._nodes.values():
            if node.alive and fits(node.available, demand):
                if node.idle:
                    candidates.append(node)
                elif short_of_workers is None and not node.starting and self._may_grow(node):
                    short_of_workers = node
        if candidates:
            if self._located and len(candidates) > 1 and self.policy.locality:
                held = self._input_bytes(spec.dependencies)
                if held is not None:
                    candidates = most_local(candidates, held)
            return self.policy.choose(candidates)
        if short_of_workers is not None:
            short_of_workers.starting += 1
            self._out.append(cmd.StartWorker(short_of_workers.node_id))
        return None

    def _scan_pipelined(self, demand, backlog):
        best = None
        for node in self._nodes.values():
            depth = int(node.pipeline)
            if not depth or not node.alive or node.starting or backlog <= len(node.workers):
                continue
            for worker_id in node.workers:
                worker = self._workers[worker_id]
                if worker.task_id is not None and len(worker.queued) < depth and not worker.blocked \
                        and not worker.sent_back and self._tasks[worker.task_id].spec.demand == demand:
                    if not worker.queued:
                        return worker
                    if best is None or len(worker.queued) < len(best.queued):
                        best = worker
        return best


class Twin:
    """Both schedulers, fed the same events; queries answer from the indexed one."""

    def __init__(self, policy):
        self.indexed = Scheduler(policy)
        self.scanning = ScanningScheduler(policy)
        self.events = 0

    def handle(self, event):
        self.events += 1
        got = self.indexed.handle(event)
        expected = self.scanning.handle(event)
        assert got == expected, f"event {self.events} {event!r}:\n indexed  {got}\n scanning {expected}"
        self.check_pipe_sizes()
        return got

    def check_pipe_sizes(self):
        """_pick_pipelined's early way out counts nodes by worker count: the
        count must be that of the nodes as last indexed."""
        counts = {}
        nodes = list(self.indexed._nodes.values())
        # (a node replaced by its re-registration counts until it is indexed again)
        nodes += [n for n in self.indexed._dirty_nodes if self.indexed._nodes.get(n.node_id) is not n]
        for node in nodes:
            if node.pipe_key is not None and node.pipe_key[0]:
                counts[node.pipe_key[1]] = counts.get(node.pipe_key[1], 0) + 1
        assert self.indexed._pipe_sizes == counts
        assert self.indexed._fewest_pipe_workers == min(counts, default=None)

    def handle_all(self, events):
        self.events += len(events)
        got = self.indexed.handle_all(events)
        expected = self.scanning.handle_all(events)
        assert got == expected, f"events up to {self.events}:\n indexed  {got}\n scanning {expected}"
        self.check_pipe_sizes()
        return got

    def __getattr__(self, name):
        return getattr(self.indexed, name)


class TwinSim(Sim):
    def __init__(self, seed, **kwargs):
        super().__init__(seed, **kwargs)
        self.s = Twin(self.policy)


@pytest.mark.parametrize("chunk", range(4))
def test_same_decisions_as_a_scan_under_the_reference_simulation(chunk):
    for seed in range(chunk, 160, 4):
        TwinSim(seed, busy_pipelines=seed % 3 == 0, objects=seed % 2 == 0, timed=seed % 5 < 3).run()


DEMANDS = [{"CPU": 1.0}] * 6 + [{"CPU": 0.5}, {"CPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}, {"GPU": 0.5}, {}]


class Fuzz:
    """Random, plausible events for a cluster of many heterogeneous nodes.

    The driver reads the indexed scheduler's state (a test may) to know which
    worker runs or holds what, so its reports are the ones a real cluster
    could send; both twins must answer them identically."""

    def __init__(self, seed, policy):
        self.rng = random.Random(seed)
        self.twin = Twin(policy)
        self.s = self.twin.indexed
        rng = self.rng
        self.node_specs = {}
        for i in range(rng.randint(5, 40)):
            cpus = rng.choice([1.0, 2.0, 4.0, 8.0])
            resources = {"CPU": cpus}
            if rng.random() < 0.3:
                resources["GPU"] = float(rng.choice([1, 2]))
            if rng.random() < 0.05:
                resources = {"GPU": 1.0}  # no CPU: its share is its idle workers
            self.node_specs[f"n{i}"] = (resources, rng.choice([0, 1, int(cpus)]),
                                        rng.choice([0, 0, 1, 2, 3, True]))
        self.alive = set()
        self.pending_joins = []
        self.next_worker = 0
        self.next_task = 0
        self.results = []  # ids of objects tasks produced (published)
        self.dispatched = 0
        self.stats = {"queued_behind": 0, "start_worker": 0, "dispatched_local": 0}

    def send(self, event):
        out = self.twin.handle(event)
        for c in out:
            if isinstance(c, StartWorker):
                self.pending_joins.append(c.node_id)
                self.stats["start_worker"] += 1
            elif isinstance(c, Dispatch):
                self.dispatched += 1
                if self.s.task_state(c.spec.task_id) == "assigned":
                    self.stats["queued_behind"] += 1  # pipelined behind a running task
                elif any(c.node_id in self.s.object_locations(d) for d in c.spec.dependencies):
                    self.stats["dispatched_local"] += 1
            elif isinstance(c, cmd.Publish):
                self.results.extend(c.return_ids)
        return out

    def join(self, node_id):
        resources, base, pipeline = self.node_specs[node_id]
        self.alive.add(node_id)
        self.pending_joins.extend([node_id] * base)
        self.send(NodeJoined(node_id, dict(resources), base, f"tcp://{node_id}", pipeline))

    def submit(self):
        rng = self.rng
        for _ in range(rng.choice([1, 1, 5, 20, 100])):
            self.next_task += 1
            tid = f"t{self.next_task}"
            deps = ()
            if self.results and rng.random() < 0.2:
                deps = tuple(rng.sample(self.results[-50:], min(len(self.results[-50:]), rng.randint(1, 2))))
            self.send(TaskSubmitted(TaskSpec(tid, (tid + ".r",), deps, dict(rng.choice(DEMANDS)),
                                             rng.choice([0, 3, -1]), "", nested=rng.random() < 0.05)))

    def busy_workers(self):
        return [w for w in self.s._workers.values() if w.task_id is not None]

    def step(self):
        rng = self.rng
        s = self.s
        r = rng.random()
        busy = self.busy_workers()
        if r < 0.25:
            self.submit()
        elif r < 0.55 and busy:
            w = rng.choice(busy)
            if rng.random() < 0.9:
                self.send(TaskFinished(w.task_id, w.worker_id))
            else:
                self.send(TaskErrored(w.task_id, w.worker_id, Failure("task_error", "boom"), retryable=True))
        elif r < 0.65 and self.pending_joins:
            node_id = self.pending_joins.pop(rng.randrange(len(self.pending_joins)))
            self.next_worker += 1
            self.send(WorkerJoined(f"w{self.next_worker}", node_id))
        elif r < 0.70 and busy:
            w = rng.choice(busy)
            if not w.blocked:
                for task_id in list(w.queued):  # a worker in get sends its queued tasks back first
                    self.send(TaskRejected(task_id, w.worker_id))
                self.send(WorkerBlocked(w.worker_id))
        elif r < 0.76:
            blocked = [w for w in s._workers.values() if w.blocked]
            if blocked:
                self.send(WorkerUnblocked(rng.choice(blocked).worker_id))
        elif r < 0.78 and s._workers:
            self.send(WorkerLost(rng.choice(sorted(s._workers)), "crashed"))
        elif r < 0.79 and len(self.alive) > 1:
            node_id = rng.choice(sorted(self.alive))
            self.alive.discard(node_id)
            self.send(NodeLost(node_id, "chaos"))
        elif r < 0.81:
            self.join(rng.choice(sorted(self.node_specs)))  # a new node, a dead one back, or a re-registration
        elif r < 0.90 and self.results and self.alive:
            self.send(ObjectLocated(rng.choice(self.results[-100:]), rng.choice(sorted(self.alive)),
                                    rng.choice([0, 1, 5, 20]) << 20))
        elif r < 0.93:
            assigned = [(t, w) for w in s._workers.values() for t in w.queued]
            if assigned:
                task_id, w = rng.choice(assigned)
                deps = s.task_spec(task_id).dependencies
                if deps:
                    self.send(InputLost(task_id, w.worker_id, deps[0]))
        elif r < 0.95 and self.results:
            self.send(ObjectsReleased(tuple(rng.sample(self.results, min(3, len(self.results))))))
        else:
            self.send(ObjectPut(f"p{self.next_task}"))

    def run(self, steps):
        names = sorted(self.node_specs)
        for node_id in self.rng.sample(names, max(1, len(names) // 2)):
            self.join(node_id)
        for _ in range(steps):
            self.step()
        # Drain: every worker joins, every task finishes.
        for _ in range(100_000):
            if self.pending_joins:
                node_id = self.pending_joins.pop()
                self.next_worker += 1
                self.send(WorkerJoined(f"w{self.next_worker}", node_id))
                continue
            busy = self.busy_workers()
            if not busy:
                break
            w = busy[0]
            if w.blocked:
                self.send(WorkerUnblocked(w.worker_id))
            self.send(TaskFinished(w.task_id, w.worker_id))


@pytest.mark.parametrize("policy", ["least_loaded", "round_robin"])
@pytest.mark.parametrize("chunk", range(2))
def test_same_decisions_as_a_scan_with_many_nodes(policy, chunk):
    stats = {"dispatched": 0}
    for seed in range(chunk, 12, 2):
        fuzz = Fuzz(seed, policy)
        fuzz.run(1000)
        stats["dispatched"] += fuzz.dispatched
        for k, v in fuzz.stats.items():
            stats[k] = stats.get(k, 0) + v
    # The fuzzer does drive every kind of decision.
    assert stats["dispatched"] > 1000 and stats["queued_behind"] and stats["start_worker"], stats
    assert stats["dispatched_local"] or policy == "round_robin", stats


def test_placement_cost_does_not_grow_with_nodes():
    """Dispatching to a cluster of 2,000 busy nodes looks at O(1) nodes per task:
    the indexes, not a scan (which this would make take seconds)."""
    import time

    s = Scheduler()
    for i in range(2000):
        s.handle(NodeJoined(f"n{i}", {"CPU": 2.0}, 2, pipeline=2))
        for k in range(2):
            s.handle(WorkerJoined(f"n{i}-w{k}", f"n{i}"))
    specs = [TaskSpec(f"t{i}", (f"t{i}.r",)) for i in range(40_000)]
    started = time.perf_counter()
    out = s.handle_all([TaskSubmitted(spec) for spec in specs])
    elapsed = time.perf_counter() - started
    dispatches = [c for c in out if isinstance(c, Dispatch)]
    assert len(dispatches) == 2000 * 2 * 3  # one running and two queued per worker
    assert elapsed < 5.0, elapsed  # a scan per task: 40,000 x 2,000 nodes


def test_start_worker_goes_to_the_first_node_short_of_workers():
    s = Scheduler()
    for i in range(5):
        s.handle(NodeJoined(f"n{i}", {"CPU": 2.0}, 0))
    out = s.handle(TaskSubmitted(TaskSpec("t1", ("t1.r",))))
    assert out == [StartWorker("n0")]  # registration order, and only one ask per decision
    out = s.handle(TaskSubmitted(TaskSpec("t2", ("t2.r",))))
    assert out == [StartWorker("n1")]  # n0 is starting one already
    out = s.handle(WorkerJoined("w0", "n0"))
    # t1 runs on it; n0 has a CPU free again but no idle worker: one more for t2.
    assert [type(c) for c in out] == [Dispatch, StartWorker] and out[0].spec.task_id == "t1"
    assert out[1].node_id == "n0"
    out = s.handle(WorkerJoined("w1", "n1"))
    assert [(type(c), c.spec.task_id) for c in out] == [(Dispatch, "t2")]
    # Nothing is left to run, and the node asked for none of its own: it goes.
    assert s.handle(WorkerJoined("w2", "n0")) == [StopWorker("w2")]


def test_pipelining_follows_registration_order_across_node_sizes():
    """Busy workers taking one more task are grouped by their node's worker
    count in the index; the choice still follows registration order, then
    join order, shallowest queue first, as a scan would."""
    twin = Twin("least_loaded")
    sizes = [2, 1, 3, 1, 2]
    for i, size in enumerate(sizes):
        twin.handle(NodeJoined(f"n{i}", {"CPU": float(size)}, size, pipeline=2))
        for k in range(size):
            twin.handle(WorkerJoined(f"n{i}-w{k}", f"n{i}"))
    # A backlog appears all at once: 40 tasks wait for one result.
    (first,) = twin.handle(TaskSubmitted(TaskSpec("p", ("p.r",))))
    for t in range(40):
        assert twin.handle(TaskSubmitted(TaskSpec(f"t{t}", (f"t{t}.r",), ("p.r",)))) == []
    out = twin.handle(TaskFinished("p", first.worker_id))
    dispatches = [c.worker_id for c in out if isinstance(c, Dispatch)]
    workers = [f"n{i}-w{k}" for i, size in enumerate(sizes) for k in range(size)]
    # Running first (least loaded: the emptiest node), then one queued behind each
    # worker in registration and join order, then a second one in that order.
    assert sorted(dispatches[:len(workers)]) == sorted(workers)
    assert dispatches[len(workers):] == workers + workers  # depth 2: then the rest waits
