"""The ``RoutingPolicy`` contract, checked for every registered policy."""

from __future__ import annotations

import random

import pytest

from corral.config import PolicyConfig
from corral.errors import NoHealthyWorker
from corral.pool import WorkerLoad
from corral.routing import RoutingRequest, build_policy

from .pool import candidate, pool
from .test_registry import ALL

CASES = [
    (size, max_workers) for size in (1, 2, 3, 8, 40) for max_workers in (1, 2, 3, 5)
]


def _requests(rng: random.Random) -> list[RoutingRequest]:
    shared = [rng.randrange(32000) for _ in range(300)]
    out = []
    for i in range(30):
        tail = [rng.randrange(32000) for _ in range(rng.randrange(0, 400))]
        out.append(
            RoutingRequest(
                model="m",
                tokens=(shared if i % 2 else []) + tail or None,
                text=None if i % 3 else "x" * rng.randrange(0, 900),
                routing_key=None if i % 4 == 0 else f"session-{i % 5}",
            )
        )
    return out


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    ("size", "max_workers"), CASES, ids=[f"n{s}-max{m}" for s, m in CASES]
)
def test_decision_is_distinct_candidates_primary_first_within_max(
    name, size, max_workers
):
    rng = random.Random(size * 10 + max_workers)
    policy = build_policy(PolicyConfig(name=name))
    candidates = [
        candidate(i, WorkerLoad(requests=rng.randrange(4), tokens=rng.randrange(3000)))
        for i in range(size)
    ]
    allowed = {c.id for c in candidates}
    for request in _requests(rng):
        # The caller may hand over a different subset each time.
        subset = rng.sample(candidates, rng.randrange(1, size + 1))
        decision = policy.pick(request, subset, max_workers)
        workers = [w.id for w in decision.workers]
        assert len(workers) == len(set(workers))
        assert len(workers) == min(max_workers, len(subset))
        assert set(workers) <= {c.id for c in subset} <= allowed
        assert decision.primary.id == workers[0]
        assert decision.reason


@pytest.mark.parametrize("name", ALL)
def test_max_workers_below_one_still_names_the_primary(name):
    decision = build_policy(PolicyConfig(name=name)).pick(
        RoutingRequest(model="m"), pool(3), 0
    )
    assert len(decision.workers) == 1


@pytest.mark.parametrize("name", ALL)
def test_empty_pool_is_no_healthy_worker(name):
    with pytest.raises(NoHealthyWorker):
        build_policy(PolicyConfig(name=name)).pick(RoutingRequest(model="m"), [], 3)


@pytest.mark.parametrize("name", ALL)
def test_removing_an_unknown_worker_is_harmless(name):
    policy = build_policy(PolicyConfig(name=name))
    policy.on_worker_removed("127.0.0.1:1")
    assert policy.pick(RoutingRequest(model="m"), pool(2), 2).primary
