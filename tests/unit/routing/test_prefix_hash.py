from __future__ import annotations

import random

import pytest

from corral.config import PolicyConfig
from corral.routing import RoutingRequest, build_policy

from .pool import pool

RNG = random.Random(11)
HEAD = [RNG.randrange(32000) for _ in range(256)]


def _tokens(head: list[int], tail: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return head + [rng.randrange(32000) for _ in range(tail)]


CASES = [
    ("tokens", lambda seed: RoutingRequest(model="m", tokens=_tokens(HEAD, 300, seed))),
    (
        "text",
        lambda seed: RoutingRequest(
            model="m", text="You are a helpful assistant. " * 40 + f"question {seed}"
        ),
    ),
]


@pytest.mark.parametrize("make", [m for _, m in CASES], ids=[n for n, _ in CASES])
def test_same_prefix_goes_to_the_same_worker(make):
    policy = build_policy(PolicyConfig(name="prefix_hash"))
    candidates = pool(6)
    targets = {policy.pick(make(seed), candidates, 1).primary.id for seed in range(30)}
    assert len(targets) == 1


def test_different_prefixes_spread_over_workers():
    policy = build_policy(PolicyConfig(name="prefix_hash"))
    candidates = pool(4)
    targets = {
        policy.pick(
            RoutingRequest(model="m", tokens=_tokens([], 300, seed)), candidates, 1
        ).primary.id
        for seed in range(60)
    }
    assert len(targets) == 4


def test_only_the_first_prefix_tokens_count():
    policy = build_policy(PolicyConfig(name="prefix_hash", params={"prefix_tokens": 8}))
    candidates = pool(8)
    picks = {
        policy.pick(
            RoutingRequest(model="m", tokens=[1, 2, 3, 4, 5, 6, 7, 8, seed]),
            candidates,
            1,
        ).primary.id
        for seed in range(20)
    }
    assert len(picks) == 1


OVERLOAD = [
    # (target load, other load, escapes?)
    ("idle_pool_stays", 0, 0, False),
    ("target_far_above_mean_escapes", 40, 2, True),
    ("above_factor_but_within_abs_stays", 8, 0, False),
    ("above_abs_but_within_factor_stays", 30, 25, False),
]


@pytest.mark.parametrize(
    ("target_load", "other_load", "escapes"),
    [case[1:] for case in OVERLOAD],
    ids=[case[0] for case in OVERLOAD],
)
def test_overloaded_target_escapes_to_the_least_loaded(
    target_load, other_load, escapes
):
    request = RoutingRequest(model="m", tokens=_tokens(HEAD, 10, 0))
    policy = build_policy(PolicyConfig(name="prefix_hash"))
    candidates = pool(4)
    target_index = [c.id for c in candidates].index(
        policy.pick(request, candidates, 1).primary.id
    )
    loads = [other_load] * 4
    loads[target_index] = target_load
    loads[(target_index + 1) % 4] = max(0, other_load - 1)  # a unique least loaded
    loaded = pool(4, requests=loads)
    decision = policy.pick(request, loaded, 2)
    if escapes:
        assert decision.reason == "prefix_overload"
        assert decision.primary.id == loaded[(target_index + 1) % 4].id
    else:
        assert decision.reason == "prefix_hash"
        assert decision.primary.id == loaded[target_index].id


def test_request_without_tokens_or_text_goes_to_the_least_loaded():
    policy = build_policy(PolicyConfig(name="prefix_hash"))
    candidates = pool(3, requests=[2, 1, 0])
    decision = policy.pick(RoutingRequest(model="m"), candidates, 1)
    assert decision.primary.id == candidates[2].id
