from __future__ import annotations

from collections import Counter

import pytest

from corral.config import PolicyConfig
from corral.routing import RoutingRequest, build_policy

from .pool import pool

REQUEST = RoutingRequest(model="m")

CASES = [
    ("two_workers_idle_wins_always", [0, 5], 1.0),
    ("one_idle_among_four", [0, 5, 5, 5], 0.45),
]


@pytest.mark.parametrize(
    ("requests", "min_share"),
    [(r, s) for _, r, s in CASES],
    ids=[n for n, _, _ in CASES],
)
def test_power_of_two_prefers_the_idle_worker(requests, min_share):
    policy = build_policy(PolicyConfig(name="power_of_two", params={"seed": 1}))
    candidates = pool(len(requests), requests=requests)
    counts = Counter(policy.pick(REQUEST, candidates, 1).primary.id for _ in range(400))
    # With 4 workers the idle one is in the sample half the time and then wins.
    assert counts[candidates[0].id] >= 400 * min_share


def test_power_of_two_never_picks_the_busiest_of_three():
    policy = build_policy(PolicyConfig(name="power_of_two", params={"seed": 3}))
    candidates = pool(3, requests=[1, 2, 9])
    picks = {policy.pick(REQUEST, candidates, 1).primary.id for _ in range(200)}
    assert candidates[2].id not in picks
    assert picks == {candidates[0].id, candidates[1].id}


def test_power_of_two_fallback_is_the_other_sampled_worker_then_by_load():
    policy = build_policy(PolicyConfig(name="power_of_two", params={"seed": 5}))
    candidates = pool(2, requests=[4, 0])
    decision = policy.pick(REQUEST, candidates, 3)
    assert [w.id for w in decision.workers] == [candidates[1].id, candidates[0].id]
