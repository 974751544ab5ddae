from __future__ import annotations

from collections import Counter

import pytest

from corral.config import PolicyConfig
from corral.routing import RoutingRequest, build_policy

from .pool import ids, pool

REQUEST = RoutingRequest(model="m")


@pytest.mark.parametrize("size", [2, 4, 10], ids=lambda s: f"n{s}")
def test_random_covers_every_candidate_roughly_evenly(size):
    policy = build_policy(PolicyConfig(name="random", params={"seed": size}))
    candidates = pool(size)
    counts = Counter(
        policy.pick(REQUEST, candidates, 1).primary.id for _ in range(400 * size)
    )
    assert set(counts) == set(ids(candidates))
    assert min(counts.values()) > 400 * 0.7


def test_random_with_a_seed_repeats_its_choices():
    candidates = pool(6)
    runs = []
    for _ in range(2):
        policy = build_policy(PolicyConfig(name="random", params={"seed": 42}))
        runs.append([policy.pick(REQUEST, candidates, 1).primary.id for _ in range(20)])
    assert runs[0] == runs[1]
