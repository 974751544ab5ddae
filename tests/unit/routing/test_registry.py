from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from corral.config import PolicyConfig
from corral.errors import ConfigError
from corral.routing import POLICY_NAMES, build_policy, register_policy
from corral.routing.round_robin import RoundRobinPolicy

ALL = [
    "random",
    "round_robin",
    "power_of_two",
    "least_load",
    "consistent_hash",
    "prefix_hash",
    "cache_aware",
]


def test_every_documented_policy_is_registered():
    assert set(ALL) <= set(POLICY_NAMES)


@pytest.mark.parametrize("name", ALL)
def test_build_policy_returns_a_policy_of_that_name(name):
    policy = build_policy(PolicyConfig(name=name))
    assert policy.name == name


def test_each_build_makes_a_new_instance():
    config = PolicyConfig(name="cache_aware")
    assert build_policy(config) is not build_policy(config)


def test_unknown_policy_name_is_a_config_error_listing_known_names():
    with pytest.raises(ConfigError) as info:
        build_policy(PolicyConfig(name="fastest"))
    assert "'fastest'" in info.value.message
    assert "round_robin" in info.value.message


BAD_PARAMS = [
    ("round_robin", {"stale_after_s": 0}, "stale_after_s"),
    ("round_robin", {"colour": "blue"}, "colour"),
    ("random", {"seed": "abc"}, "seed"),
    ("power_of_two", {"kv_weight": -1}, "kv_weight"),
    ("least_load", {"tokens_per_request": True}, "tokens_per_request"),
    ("consistent_hash", {"header": ""}, "header"),
    ("consistent_hash", {"virtual_nodes": 0}, "virtual_nodes"),
    ("prefix_hash", {"prefix_tokens": 2.5}, "prefix_tokens"),
    ("prefix_hash", {"load_factor": 0.5}, "load_factor"),
    ("cache_aware", {"cache_threshold": 1.5}, "cache_threshold"),
    ("cache_aware", {"balance_abs_threshold": "64"}, "balance_abs_threshold"),
    ("cache_aware", {"balance_rel_threshold": 0.9}, "balance_rel_threshold"),
    ("cache_aware", {"block_size": 0}, "block_size"),
    ("cache_aware", {"max_tree_blocks": -5}, "max_tree_blocks"),
    ("cache_aware", {"cache_treshold": 0.5}, "cache_treshold"),
    ("cache_aware", {"stale_after_s": float("nan")}, "stale_after_s"),
]


@pytest.mark.parametrize(
    ("name", "params", "key"), BAD_PARAMS, ids=[f"{n}-{k}" for n, _, k in BAD_PARAMS]
)
def test_bad_params_raise_config_error_naming_policy_and_key(name, params, key):
    with pytest.raises(ConfigError) as info:
        build_policy(PolicyConfig(name=name, params=params))
    assert info.value.param == key
    assert repr(key) in info.value.message
    assert repr(name) in info.value.message


GOOD_PARAMS = [
    ("consistent_hash", {"header": "X-User", "virtual_nodes": 40}),
    (
        "prefix_hash",
        {"prefix_tokens": 64, "load_factor": 2, "balance_abs_threshold": 0},
    ),
    (
        "cache_aware",
        {
            "cache_threshold": 0.5,
            "balance_abs_threshold": 32,
            "balance_rel_threshold": 1.1,
            "block_size": 32,
            "max_tree_blocks": 1000,
            "stale_after_s": 2.5,
        },
    ),
    ("power_of_two", {"seed": 7, "kv_weight": 0}),
]


@pytest.mark.parametrize(
    ("name", "params"), GOOD_PARAMS, ids=[n for n, _ in GOOD_PARAMS]
)
def test_valid_params_are_accepted(name, params):
    assert build_policy(PolicyConfig(name=name, params=params)).name == name


def test_consistent_hash_exposes_its_header_lower_cased():
    policy = build_policy(
        PolicyConfig(name="consistent_hash", params={"header": "X-User"})
    )
    assert policy.header == "x-user"  # type: ignore[attr-defined]


def test_register_policy_makes_a_name_buildable_and_refuses_duplicates():
    name = "routing_test_custom"

    def factory(params: Mapping[str, Any]) -> RoundRobinPolicy:
        return RoundRobinPolicy()

    if name not in POLICY_NAMES:
        register_policy(name, factory)
    assert name in POLICY_NAMES
    assert isinstance(build_policy(PolicyConfig(name=name)), RoundRobinPolicy)
    with pytest.raises(ConfigError):
        register_policy(name, factory)
    with pytest.raises(ConfigError):
        register_policy("round_robin", factory)
