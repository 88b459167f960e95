"""Placement policies: which node, among those that can run a task now.

A policy sees only the candidate nodes (each already fits the task's demand
and has an idle worker) and returns one of them. Policies are tiny and
stateless but for round-robin's cursor.
"""
from __future__ import annotations


class LeastLoaded:
    """Prefer the node with the largest share of its CPUs free (the default)."""

    name = "least_loaded"

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

    def __init__(self):
        self._turn = 0

    def choose(self, candidates):
        self._turn += 1
        return candidates[self._turn % len(candidates)]


POLICIES = {"least_loaded": LeastLoaded, "round_robin": RoundRobin}


def make_policy(name):
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown placement policy {name!r}; choose one of {sorted(POLICIES)}") from None
