from __future__ import annotations

import time
from collections import Counter

import pytest

from corral.config import PolicyConfig
from corral.pool import WorkerLoad
from corral.routing import RoutingRequest, build_policy

from .pool import candidate, ids, pool

REQUEST = RoutingRequest(model="m")

CASES = [
    ("unique_minimum", [3, 0, 2], 1),
    ("last_is_least", [3, 2, 1], 2),
]


@pytest.mark.parametrize(
    ("requests", "expected"),
    [(r, e) for _, r, e in CASES],
    ids=[n for n, _, _ in CASES],
)
def test_least_load_picks_the_lowest_score(requests, expected):
    policy = build_policy(PolicyConfig(name="least_load"))
    candidates = pool(len(requests), requests=requests)
    for _ in range(len(requests)):
        assert policy.pick(REQUEST, candidates, 1).primary.id == candidates[expected].id


@pytest.mark.parametrize("size", [2, 3, 8], ids=lambda s: f"n{s}")
def test_least_load_spreads_ties_instead_of_pinning_the_first(size):
    policy = build_policy(PolicyConfig(name="least_load"))
    candidates = pool(size)
    counts = Counter(
        policy.pick(REQUEST, candidates, 1).primary.id for _ in range(size * 5)
    )
    assert counts == {worker_id: 5 for worker_id in ids(candidates)}


def test_least_load_uses_fresh_engine_queue_and_ignores_a_stale_one():
    policy = build_policy(PolicyConfig(name="least_load", params={"stale_after_s": 5}))
    now = time.monotonic()
    fresh_busy = candidate(0, WorkerLoad(engine_waiting=10, engine_updated_at=now))
    stale_busy = candidate(1, WorkerLoad(engine_waiting=10, engine_updated_at=now - 99))
    light = candidate(2, WorkerLoad(requests=1))
    decision = policy.pick(REQUEST, [fresh_busy, stale_busy, light], 3)
    assert [w.id for w in decision.workers] == [stale_busy.id, light.id, fresh_busy.id]
