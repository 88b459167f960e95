"""Placement policies: which node, among those that can run a task now.

A policy sees only the candidate nodes (each already fits the task's demand
and has an idle worker) and returns one of them. Policies are tiny and
stateless but for round-robin's cursor.

A policy with ``locality`` set first narrows the candidates to the nodes that
hold the most bytes of the task's inputs (``most_local``); the scheduler does
that only when some input has known copies, so tasks with small inputs pay
nothing for it.
"""
from __future__ import annotations


class LeastLoaded:
    """Prefer the node with the largest share of its CPUs free (the default)."""

    name = "least_loaded"
    locality = True

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
