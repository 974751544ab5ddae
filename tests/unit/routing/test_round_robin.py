from __future__ import annotations

import pytest

from corral.config import PolicyConfig
from corral.routing import RoutingRequest, build_policy

from .pool import ids, pool

REQUEST = RoutingRequest(model="m")


@pytest.mark.parametrize("size", [1, 2, 5], ids=lambda s: f"n{s}")
def test_round_robin_cycles_through_every_candidate_in_order(size):
    policy = build_policy(PolicyConfig(name="round_robin"))
    candidates = pool(size)
    picks = [policy.pick(REQUEST, candidates, 1).primary.id for _ in range(3 * size)]
    assert picks == ids(candidates) * 3


def test_round_robin_fallbacks_are_the_least_loaded_others():
    policy = build_policy(PolicyConfig(name="round_robin"))
    candidates = pool(4, requests=[0, 9, 1, 5])
    decision = policy.pick(REQUEST, candidates, 3)
    assert [w.id for w in decision.workers] == [
        candidates[0].id,
        candidates[2].id,
        candidates[3].id,
    ]


def test_round_robin_keeps_spreading_when_the_pool_shrinks():
    policy = build_policy(PolicyConfig(name="round_robin"))
    candidates = pool(4)
    for _ in range(3):
        policy.pick(REQUEST, candidates, 1)
    smaller = candidates[:2]
    picks = [policy.pick(REQUEST, smaller, 1).primary.id for _ in range(4)]
    assert sorted(picks) == sorted(ids(smaller) * 2)
