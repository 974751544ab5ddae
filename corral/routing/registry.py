"""Policies by type name, built from configuration through validating factories.

``build_policy`` is the only way the gateway makes a policy: it looks the
configured name up here and hands the ``params`` mapping to that factory, which
checks every key and raises ``ConfigError`` naming the policy and the bad key.
``register_policy`` lets a deployment add its own.
"""

from __future__ import annotations

import logging
from collections.abc import KeysView

from corral.config.settings import PolicyConfig
from corral.errors import ConfigError
from corral.routing.base import PolicyFactory, RoutingPolicy
from corral.routing.cache_aware import build_cache_aware
from corral.routing.consistent_hash import build_consistent_hash
from corral.routing.least_load import build_least_load
from corral.routing.power_of_two import build_power_of_two
from corral.routing.prefix_hash import build_prefix_hash
from corral.routing.random_choice import build_random
from corral.routing.round_robin import build_round_robin

logger = logging.getLogger(__name__)

_FACTORIES: dict[str, PolicyFactory] = {
    "random": build_random,
    "round_robin": build_round_robin,
    "power_of_two": build_power_of_two,
    "least_load": build_least_load,
    "consistent_hash": build_consistent_hash,
    "prefix_hash": build_prefix_hash,
    "cache_aware": build_cache_aware,
}

POLICY_NAMES: KeysView[str] = _FACTORIES.keys()
"""Registered type names; a live view, so later registrations show up."""


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make ``name`` buildable. Refuses to replace a registered name, since two
    modules claiming one name is a wiring mistake better caught at start-up."""
    if not isinstance(name, str) or not name:
        raise ConfigError("a routing policy name must be a non-empty string")
    if name in _FACTORIES:
        raise ConfigError(f"routing policy {name!r} is already registered")
    _FACTORIES[name] = factory
    logger.debug("routing policy registered: %s", name)


def build_policy(config: PolicyConfig) -> RoutingPolicy:
    """A new policy instance (one per model pool) for ``config``."""
    factory = _FACTORIES.get(config.name)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES))
        raise ConfigError(
            f"unknown routing policy {config.name!r} (known: {known})", param="name"
        )
    return factory(config.params)
