"""Placement policies: which node, among those that can run a task now.

A candidate node is alive, has an idle worker and has the task's demand free.
A policy answers from an *index* of the candidates for one demand shape, which
the scheduler keeps up to date as nodes change (``Scheduler._index_node``), so
that placing a task costs O(log nodes) instead of a scan of every node:

* ``least_loaded`` (the default): the candidate with the largest share of its
  CPUs free, ties going to the node registered first. ``ShareIndex`` is a heap
  ordered by exactly that.
* ``round_robin`` (the seed's baseline): the candidates in registration order,
  taken in turn. ``TurnIndex`` counts them in a Fenwick tree, so the k-th one
  is found without listing them.

Both indexes are lazy: a node is pushed again, with a fresh stamp, every time
it changes, and entries whose stamp is no longer the node's are skipped when
they surface (and swept out once they outnumber the live ones).

A policy with ``locality`` set first narrows the candidates to the nodes that
hold the most bytes of the task's inputs (``most_local``); the scheduler does
that only when some input has known copies, so tasks with small inputs pay
nothing for it. ``choose`` picks among such an explicit, short list.
"""
from __future__ import annotations

from heapq import heapify, heappop, heappush


class ShareIndex:
    """The candidates for one demand shape, best first for ``least_loaded``.

    Heap entries are ``(-free share, registration order, stamp, node)``: the
    order is unique per node, and the stamps (``node.version`` when pushed)
    are unique, so a comparison never reaches the node object.
    """

    __slots__ = ("_heap", "_members")

    def __init__(self):
        self._heap = []
        self._members = {}  # registration order -> node, for the candidates now

    def update(self, node, member):
        """``node`` changed (its stamp is new): it is a candidate or not."""
        if member:
            self._members[node.order] = node
            heap = self._heap
            heappush(heap, (-node.free_share(), node.order, node.version, node))
            if len(heap) > 2 * len(self._members) + 64:
                self._heap = [e for e in heap if e[3].version == e[2]]
                heapify(self._heap)
        elif self._members.get(node.order) is node:
            del self._members[node.order]

    def __len__(self):
        return len(self._members)

    def best(self):
        heap = self._heap
        while heap:
            entry = heap[0]
            if entry[3].version == entry[2]:
                return entry[3]
            heappop(heap)  # the node changed since: a newer entry (or none) stands for it
        return None


class TurnIndex:
    """The candidates for one demand shape by registration order, counted in a
    Fenwick tree so that ``kth`` costs O(log nodes)."""

    __slots__ = ("_members", "_tree")

    def __init__(self):
        self._members = {}  # registration order -> node
        self._tree = [0] * 65  # 1-based Fenwick tree over orders 0..63; grows by doubling

    def update(self, node, member):
        order = node.order
        current = self._members.get(order)
        if member:
            if current is None:
                self._add(order, 1)
            self._members[order] = node
        elif current is node:
            del self._members[order]
            self._add(order, -1)

    def __len__(self):
        return len(self._members)

    def _add(self, order, delta):
        tree = self._tree
        size = len(tree) - 1
        if order >= size:  # a node registered past the tree's end: rebuild it twice as large
            while order >= size:
                size *= 2
            self._tree = tree = [0] * (size + 1)
            for member in self._members:
                if member != order:
                    self._raw_add(tree, member, 1)
        self._raw_add(tree, order, delta)

    @staticmethod
    def _raw_add(tree, order, delta):
        i = order + 1
        size = len(tree) - 1
        while i <= size:
            tree[i] += delta
            i += i & -i

    def kth(self, k):
        """The candidate with the k-th smallest registration order (from 0)."""
        tree = self._tree
        size = len(tree) - 1
        position, step = 0, size  # size is a power of two
        while step:
            nxt = position + step
            if nxt <= size and tree[nxt] <= k:
                position = nxt
                k -= tree[nxt]
            step >>= 1
        return self._members[position]  # position = order (0-based) of the (k+1)-th member


class LeastLoaded:
    """Prefer the node with the largest share of its CPUs free (the default)."""

    name = "least_loaded"
    locality = True

    @staticmethod
    def index():
        return ShareIndex()

    @staticmethod
    def pick(index):
        return index.best()

    def choose(self, candidates):
        best = candidates[0]
        if len(candidates) == 1:
            return best
        best_score = best.free_share()
        for node in candidates[1:]:
            score = node.free_share()
            if score > best_score:
                best, best_score = node, score
        return best


class RoundRobin:
    """Take nodes in turn, whatever their load (the seed's baseline)."""

    name = "round_robin"
    locality = False  # the baseline kept for comparison: placement blind to data

    def __init__(self):
        self._turn = 0

    @staticmethod
    def index():
        return TurnIndex()

    def pick(self, index):
        count = len(index)
        if not count:
            return None
        self._turn += 1
        return index.kth(self._turn % count)

    def choose(self, candidates):
        self._turn += 1
        return candidates[self._turn % len(candidates)]


def most_local(candidates, held):
    """The candidates holding the most input bytes (``held``: node id -> bytes
    of the task's inputs stored there), in their order; all of them when none
    holds any, so ties and zero bytes leave the choice to the policy."""
    best, most = candidates, 0
    for node in candidates:
        size = held.get(node.node_id, 0)
        if size > most:
            best, most = [node], size
        elif size == most and most:
            best.append(node)
    return best


POLICIES = {"least_loaded": LeastLoaded, "round_robin": RoundRobin}


def make_policy(name):
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown placement policy {name!r}; choose one of {sorted(POLICIES)}") from None
