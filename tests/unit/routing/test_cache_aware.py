from __future__ import annotations

import random
from collections import Counter

import pytest

from corral.config import PolicyConfig
from corral.routing import RoutingRequest, build_policy
from corral.routing.cache_aware import CacheAwarePolicy

from .pool import ids, pool


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(32000) for _ in range(n)]


def _policy(**params) -> CacheAwarePolicy:
    policy = build_policy(PolicyConfig(name="cache_aware", params=params))
    assert isinstance(policy, CacheAwarePolicy)
    return policy


def test_a_growing_conversation_stays_on_one_worker():
    rng = random.Random(1)
    policy = _policy()
    candidates = pool(4)
    conversations: list[list[int]] = [_tokens(rng, 200) for _ in range(4)]
    homes: dict[int, set[str]] = {i: set() for i in range(4)}
    for _turn in range(6):
        for i, conversation in enumerate(conversations):
            conversation += _tokens(rng, 80)
            request = RoutingRequest(model="m", tokens=list(conversation))
            homes[i].add(policy.pick(request, candidates, 1).primary.id)
    assert all(len(home) == 1 for home in homes.values())
    # And the four conversations did not pile onto one worker.
    assert len({next(iter(home)) for home in homes.values()}) == 4


@pytest.mark.parametrize("size", [2, 4, 8], ids=lambda s: f"n{s}")
def test_different_prefixes_spread_over_idle_workers(size):
    rng = random.Random(size)
    policy = _policy()
    candidates = pool(size)
    counts = Counter(
        policy.pick(
            RoutingRequest(model="m", tokens=_tokens(rng, 300)), candidates, 1
        ).primary.id
        for _ in range(3 * size)
    )
    assert counts == {worker_id: 3 for worker_id in ids(candidates)}


def _seed_holder(policy, candidates, tokens) -> int:
    first = policy.pick(RoutingRequest(model="m", tokens=tokens), candidates, 1)
    return ids(candidates).index(first.primary.id)


SPILL = [
    # holder load, others' load, expected branch
    ("idle_holder_hits", 0, 0, "cache_hit"),
    ("busier_holder_still_hits", 20, 0, "cache_hit"),
    ("far_above_mean_and_abs_spills", 200, 0, "cache_spill"),
    ("above_abs_within_rel_hits", 140, 100, "cache_hit"),
]


@pytest.mark.parametrize(
    ("holder_load", "other_load", "reason"),
    [case[1:] for case in SPILL],
    ids=[case[0] for case in SPILL],
)
def test_spill_gate_under_load(holder_load, other_load, reason):
    rng = random.Random(7)
    prompt = _tokens(rng, 512)
    policy = _policy()
    holder = _seed_holder(policy, pool(4), prompt)
    loads = [other_load] * 4
    loads[holder] = holder_load
    least = (holder + 1) % 4
    loads[least] = max(0, other_load - 1)
    loaded = pool(4, requests=loads)
    decision = policy.pick(RoutingRequest(model="m", tokens=prompt), loaded, 1)
    assert decision.reason == reason
    expected = holder if reason == "cache_hit" else least
    assert decision.primary.id == loaded[expected].id


THRESHOLD = [
    # shared fraction of the second prompt, threshold, stays on the holder?
    ("well_above_default", 0.8, 0.3, True),
    ("below_default", 0.2, 0.3, False),
    ("above_a_raised_threshold_not", 0.5, 0.6, False),
    ("zero_threshold_any_match", 0.1, 0.0, True),
]


@pytest.mark.parametrize(
    ("shared", "threshold", "stays"),
    [case[1:] for case in THRESHOLD],
    ids=[case[0] for case in THRESHOLD],
)
def test_match_ratio_threshold_decides_between_holder_and_least_loaded(
    shared, threshold, stays
):
    rng = random.Random(9)
    total = 1024
    head = _tokens(rng, int(total * shared))
    policy = _policy(cache_threshold=threshold)
    holder = _seed_holder(policy, pool(3), head + _tokens(rng, total - len(head)))
    # The holder carries one request more, so a miss goes elsewhere.
    loads = [0, 0, 0]
    loads[holder] = 1
    loaded = pool(3, requests=loads)
    second = head + _tokens(rng, total - len(head))
    decision = policy.pick(RoutingRequest(model="m", tokens=second), loaded, 1)
    assert (decision.primary.id == loaded[holder].id) is stays
    assert decision.reason == ("cache_hit" if stays else "cache_miss")


def test_fallbacks_order_holders_by_match_length_then_load():
    rng = random.Random(10)
    base = _tokens(rng, 640)
    policy = _policy()
    candidates = pool(4)
    # Worker 0 holds all of it, worker 1 half of it, 2 and 3 nothing.
    policy.token_tree.insert(_packed(base), candidates[0].id)
    policy.token_tree.insert(_packed(base[:320] + _tokens(rng, 64)), candidates[1].id)
    loaded = pool(4, requests=[0, 0, 3, 1])
    decision = policy.pick(RoutingRequest(model="m", tokens=base), loaded, 4)
    assert [w.id for w in decision.workers] == [
        loaded[0].id,
        loaded[1].id,
        loaded[3].id,
        loaded[2].id,
    ]


def test_eviction_bounds_the_tree_whatever_is_sent():
    rng = random.Random(11)
    policy = _policy(max_tree_blocks=2000)
    candidates = pool(4)
    for _ in range(1500):
        tokens = _tokens(rng, rng.randrange(16, 2000))
        policy.pick(RoutingRequest(model="m", tokens=tokens), candidates, 1)
        text = "".join(
            chr(97 + rng.randrange(26)) for _ in range(rng.randrange(64, 900))
        )
        policy.pick(RoutingRequest(model="m", text=text), candidates, 1)
    assert policy.token_tree.total_blocks <= 2000
    assert policy.token_tree.node_count <= 2000
    assert policy.text_tree.total_blocks <= 2000


def test_a_removed_worker_is_purged_and_its_prefixes_miss():
    rng = random.Random(12)
    prompt = _tokens(rng, 400)
    policy = _policy()
    candidates = pool(3)
    holder = candidates[_seed_holder(policy, candidates, prompt)]
    policy.on_worker_removed(holder.id)
    assert holder.id not in policy.token_tree.tenants()
    assert policy.token_tree.total_blocks == 0
    rest = [c for c in candidates if c is not holder]
    decision = policy.pick(RoutingRequest(model="m", tokens=prompt), rest, 1)
    assert decision.reason == "cache_miss"


def test_a_worker_absent_from_candidates_long_enough_is_pruned():
    now = [0.0]
    policy = CacheAwarePolicy(prune_absent_after_s=60, clock=lambda: now[0])
    rng = random.Random(13)
    candidates = pool(3)
    prompt = _tokens(rng, 400)
    holder = candidates[_seed_holder(policy, candidates, prompt)]
    rest = [c for c in candidates if c is not holder]
    for step in range(600):
        now[0] = step * 0.5  # 300 s in all
        policy.pick(RoutingRequest(model="m"), rest, 1)
    assert holder.id not in policy.token_tree.tenants()


def test_a_briefly_absent_worker_keeps_its_cache():
    now = [0.0]
    policy = CacheAwarePolicy(prune_absent_after_s=60, clock=lambda: now[0])
    rng = random.Random(14)
    candidates = pool(3)
    prompt = _tokens(rng, 400)
    holder = candidates[_seed_holder(policy, candidates, prompt)]
    rest = [c for c in candidates if c is not holder]
    for step in range(600):
        now[0] = step * 0.05  # 30 s in all
        policy.pick(RoutingRequest(model="m"), rest, 1)
    assert holder.id in policy.token_tree.tenants()


def test_untokenized_text_conversation_stays_on_one_worker():
    policy = _policy()
    candidates = pool(4)
    history = "system: you answer in French.\n"
    homes = set()
    for turn in range(8):
        history += f"user: question number {turn} about the weather in Lyon\n" * 3
        decision = policy.pick(RoutingRequest(model="m", text=history), candidates, 1)
        homes.add(decision.primary.id)
    assert len(homes) == 1
    assert policy.text_tree.total_blocks > 0
    assert policy.token_tree.total_blocks == 0


def test_request_with_neither_tokens_nor_text_goes_to_the_least_loaded():
    policy = _policy()
    candidates = pool(3, requests=[3, 0, 1])
    decision = policy.pick(RoutingRequest(model="m"), candidates, 3)
    assert [w.id for w in decision.workers] == [
        candidates[1].id,
        candidates[2].id,
        candidates[0].id,
    ]


def _packed(tokens):
    from corral.routing.blocks import token_blocks

    packed = token_blocks(tokens, 16)
    assert packed is not None
    return packed
