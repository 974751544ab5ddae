from __future__ import annotations

from collections import Counter

import pytest

from corral.config import PolicyConfig
from corral.routing import RoutingRequest, build_policy

from .pool import candidate, pool

KEYS = [f"session-{i}" for i in range(3000)]


def _owners(policy, candidates) -> dict[str, str]:
    return {
        key: policy.pick(
            RoutingRequest(model="m", routing_key=key), candidates, 1
        ).primary.id
        for key in KEYS
    }


def test_same_key_always_lands_on_the_same_worker():
    policy = build_policy(PolicyConfig(name="consistent_hash"))
    candidates = pool(5)
    first = _owners(policy, candidates)
    assert _owners(policy, candidates) == first


def test_placement_is_stable_across_instances_and_candidate_order():
    candidates = pool(5)
    a = _owners(build_policy(PolicyConfig(name="consistent_hash")), candidates)
    b = _owners(build_policy(PolicyConfig(name="consistent_hash")), candidates[::-1])
    assert a == b


def test_keys_spread_over_every_worker():
    counts = Counter(
        _owners(build_policy(PolicyConfig(name="consistent_hash")), pool(5)).values()
    )
    assert len(counts) == 5
    assert min(counts.values()) > len(KEYS) / 5 * 0.6


@pytest.mark.parametrize("size", [4, 10], ids=lambda s: f"n{s}")
def test_adding_a_worker_moves_about_one_nth_of_keys_and_only_to_it(size):
    policy = build_policy(PolicyConfig(name="consistent_hash"))
    before = _owners(policy, pool(size))
    grown = pool(size + 1)
    after = _owners(policy, grown)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert {after[key] for key in moved} == {grown[-1].id}
    assert len(moved) / len(KEYS) == pytest.approx(1 / (size + 1), abs=0.5 / (size + 1))


@pytest.mark.parametrize("size", [4, 10], ids=lambda s: f"n{s}")
def test_removing_a_worker_moves_only_its_keys(size):
    policy = build_policy(PolicyConfig(name="consistent_hash"))
    candidates = pool(size)
    before = _owners(policy, candidates)
    gone = candidates[1]
    policy.on_worker_removed(gone.id)
    after = _owners(policy, [c for c in candidates if c is not gone])
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == gone.id}
    assert len(moved) / len(KEYS) == pytest.approx(1 / size, abs=0.5 / size)


def test_a_filtered_out_worker_gets_its_keys_back_when_it_returns():
    policy = build_policy(PolicyConfig(name="consistent_hash"))
    candidates = pool(4)
    before = _owners(policy, candidates)
    _owners(policy, candidates[1:])
    assert _owners(policy, candidates) == before


def test_fallbacks_follow_the_ring_and_repeat_for_a_key():
    policy = build_policy(PolicyConfig(name="consistent_hash"))
    candidates = pool(6)
    request = RoutingRequest(model="m", routing_key="user-7")
    first = policy.pick(request, candidates, 3)
    assert len({w.id for w in first.workers}) == 3
    assert policy.pick(request, candidates, 3) == first


def test_without_a_key_the_least_loaded_worker_serves():
    policy = build_policy(PolicyConfig(name="consistent_hash"))
    candidates = pool(3, requests=[4, 0, 2])
    decision = policy.pick(RoutingRequest(model="m"), candidates, 3)
    assert decision.reason == "hash_no_key"
    assert [w.id for w in decision.workers] == [
        candidates[1].id,
        candidates[2].id,
        candidates[0].id,
    ]


def test_ring_stays_bounded_when_workers_vanish_without_removal():
    policy = build_policy(PolicyConfig(name="consistent_hash"))
    request = RoutingRequest(model="m", routing_key="k")
    for generation in range(20):
        batch = [candidate(generation * 10 + i) for i in range(10)]
        policy.pick(request, batch, 1)
    assert len(policy._ring) <= 64 + 4 * 10 + 10  # type: ignore[attr-defined]
