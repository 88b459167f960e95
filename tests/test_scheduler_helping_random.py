"""Randomized test of helping against a model of the worker process.

Each simulated worker behaves as ``orion/transport/zmq_worker.py`` does: a
stack of frames (the task it runs on top of the tasks suspended in ``get``),
one queue of "help" dispatches per ``get`` in progress, a main queue of
pipelined dispatches, normal dispatches sent back while its top task waits in
``get``, and leftovers of a ``get`` that ends early moved to the enclosing
level. Messages both ways are delivered in a random interleaving (each
worker's reports stay in order, as on its socket). Parents submit children
and wait for all of them; some gets are interrupted (cancel), some workers
are killed. At the end every task ended exactly once and the cluster's
resources are all free again: nothing leaked, nothing hung.
"""
from __future__ import annotations

import random
from collections import deque

import pytest

from orion.scheduler import (CancelRequested, Dispatch, FailTask, InterruptTask, NodeJoined, Publish, Retry,
                             Scheduler, StartWorker, StopWorker, TaskErrored, TaskFinished, TaskRejected,
                             TaskSpec, TaskSubmitted, WorkerBlocked, WorkerJoined, WorkerLost, WorkerUnblocked)
from orion.scheduler.events import Failure

pytestmark = pytest.mark.timeout(60)


class Frame:
    def __init__(self, task_id):
        self.task_id = task_id
        self.in_get = False
        self.waits = ()
        self.level = None  # deque of help dispatches while in get
        self.submitted = False
        self.interrupted = False


class World:
    def __init__(self, seed):
        self.rng = rng = random.Random(seed)
        self.s = Scheduler(adaptive_pipelining=rng.random() < 0.5)
        self.cpus = rng.choice([1.0, 2.0])
        depth = rng.choice([0, 2, 16])
        self.s.handle(NodeJoined("n1", {"CPU": self.cpus}, base_workers=int(self.cpus), pipeline=depth))
        self.workers = {}  # id -> {"frames": [Frame], "queue": deque, "outbox": deque}
        self.inbox = {}  # worker id -> deque of commands
        self.next_worker = 0
        self.children = {}  # task id -> names of the children each run submits and waits for
        self.runs = {}  # task id -> how many times it submitted its children
        self.delivered = set()  # ids of the tasks the scheduler was told of
        self.ended = {}  # task id -> how many times it ended for good
        self.published = set()
        self.cancelled = set()
        for _ in range(int(self.cpus)):
            self.add_worker()
        self.task_count = 0

    # ---------------------------------------------------------- plumbing
    def add_worker(self):
        worker_id = f"w{self.next_worker}"
        self.next_worker += 1
        self.workers[worker_id] = {"frames": [], "queue": deque(), "outbox": deque()}
        self.inbox[worker_id] = deque()
        self.feed(WorkerJoined(worker_id, "n1"))

    def feed(self, event):
        if type(event) is TaskSubmitted:
            self.delivered.add(event.spec.task_id)  # (a killed worker's unsent submits never count)
        for command in self.s.handle(event):
            kind = type(command)
            if kind is Dispatch:
                self.inbox[command.worker_id].append(command)
            elif kind is Publish:
                self.published.add(command.task_id)
                self.end(command.task_id)
            elif kind is FailTask:
                self.published.add(command.task_id)
                self.end(command.task_id)
            elif kind is StartWorker:
                self.add_worker()
            elif kind is StopWorker:
                worker = self.workers.pop(command.worker_id, None)
                assert worker is None or not worker["frames"], "stopped a busy worker"
                self.inbox.pop(command.worker_id, None)
            elif kind is InterruptTask:
                if command.worker_id in self.inbox:
                    self.inbox[command.worker_id].append(command)
            elif kind is Retry:
                pass

    def end(self, task_id):
        self.ended[task_id] = self.ended.get(task_id, 0) + 1

    def submit(self, task_id, nested, children):
        self.children[task_id] = children
        self.task_count += 1
        return TaskSubmitted(TaskSpec(task_id, (task_id + ".r",), (), {"CPU": 1.0}, 3,
                                      "parent" if children else "leaf", nested=nested))

    # ------------------------------------------------------------ worker
    def receive(self, worker_id):
        """The worker reads one command (as zmq_worker.Worker._receive)."""
        worker = self.workers[worker_id]
        command = self.inbox[worker_id].popleft()
        frames = worker["frames"]
        if type(command) is InterruptTask:
            for frame in frames:
                if frame.task_id == command.task_id:
                    frame.interrupted = True
            return
        levels = [f.level for f in frames if f.in_get]
        if command.nested:
            (levels[-1] if levels else worker["queue"]).append(command.spec.task_id)
        elif frames and frames[-1].in_get:
            worker["outbox"].append(TaskRejected(command.spec.task_id, worker_id))
        else:
            worker["queue"].append(command.spec.task_id)

    def step(self, worker_id):
        """The worker advances its top task by one action; False if it has none to take."""
        worker = self.workers[worker_id]
        frames, out = worker["frames"], worker["outbox"]
        if not frames:
            if not worker["queue"]:
                return False
            frames.append(Frame(worker["queue"].popleft()))
            return True
        top = frames[-1]
        children = self.children[top.task_id]
        if top.in_get:
            if top.interrupted or all(c in self.published for c in top.waits):
                self.leave_get(worker, top)
                out.append(WorkerUnblocked(worker_id))
                return True
            if top.level:
                frames.append(Frame(top.level.popleft()))
                return True
            return False
        if children and not top.submitted and not top.interrupted:
            top.submitted = True
            # A run submits fresh children (a retried parent's are new tasks, as in Orion).
            self.runs[top.task_id] = run = self.runs.get(top.task_id, 0) + 1
            children = [f"{top.task_id}.{run}{name}" for name in children]
            for child in children:
                grandchildren = ["g1", "g2"] if self.rng.random() < 0.3 and "g" not in child else []
                out.append(self.submit(child, True, grandchildren))
            for task_id in worker["queue"]:
                out.append(TaskRejected(task_id, worker_id))
            worker["queue"].clear()
            top.in_get, top.waits, top.level = True, tuple(children), deque()
            # (the head turns the object ids the worker names into these task ids)
            out.append(WorkerBlocked(worker_id, tuple(children) if self.rng.random() < 0.9 else ()))
            return True
        frames.pop()
        if top.interrupted:
            out.append(TaskErrored(top.task_id, worker_id, Failure("cancelled", "x"), retryable=False,
                                   cancelled=True))
        else:
            out.append(TaskFinished(top.task_id, worker_id, duration=self.rng.choice([1e-5, 0.01])))
        return True

    def leave_get(self, worker, frame):
        frame.in_get = False
        leftovers, frame.level = frame.level, None
        if leftovers:
            levels = [f.level for f in worker["frames"] if f.in_get]
            (levels[-1] if levels else worker["queue"]).extendleft(reversed(leftovers))

    # ------------------------------------------------------------- world
    def run(self):
        rng = self.rng
        roots = []
        for i in range(rng.randint(1, 6)):
            roots.append(self.submit(f"r{i}", False, [f"c{j}" for j in range(rng.randint(0, 4))]))
        for event in roots:
            self.feed(event)
        for _ in range(20_000):
            choices = []
            for worker_id, worker in self.workers.items():
                if worker["outbox"]:
                    choices.append(("deliver", worker_id))
                if self.inbox[worker_id]:
                    choices.append(("receive", worker_id))
                choices.append(("step", worker_id))
            roll = rng.random()
            if roll < 0.01:
                task_id = rng.choice(sorted(self.children))
                self.cancelled.add(task_id)
                self.feed(CancelRequested(task_id))
                continue
            if roll < 0.015 and self.workers:
                victim = rng.choice(sorted(self.workers))
                del self.workers[victim]
                self.inbox.pop(victim)
                self.feed(WorkerLost(victim, "killed"))
                self.add_worker()  # the node starts one in its place
                continue
            action, worker_id = rng.choice(choices)
            if action == "deliver":
                self.feed(self.workers[worker_id]["outbox"].popleft())
            elif action == "receive":
                self.receive(worker_id)
            else:
                self.step(worker_id)
            if self.quiet():
                break
        return self

    def quiet(self):
        return all(not w["frames"] and not w["queue"] and not w["outbox"] and not self.inbox[i]
                   for i, w in self.workers.items()) and not any(self.s.counts().values())


@pytest.mark.parametrize("seed", range(300))
def test_helping_model(seed):
    world = World(seed).run()
    assert world.quiet(), f"seed {seed}: did not finish: {world.s.counts()}"
    for task_id, count in world.ended.items():
        assert count == 1, f"seed {seed}: task {task_id} ended {count} times"
    (node,) = world.s.nodes()
    assert node["available"] == {"CPU": world.cpus}, f"seed {seed}: resources leaked: {node}"
    assert node["running"] == 0
    assert set(world.ended) == world.delivered  # every task submitted ended
