"""Routing policies: pure functions of (request, candidates) -> ordered workers.

The ext_proc server builds one policy per model pool with ``build_policy`` and
calls ``pick`` for every request; nothing here does I/O or awaits.
"""

from corral.routing.base import (
    Candidate,
    Decision,
    PolicyFactory,
    RoutingPolicy,
    RoutingRequest,
)
from corral.routing.load import LoadScorer
from corral.routing.registry import POLICY_NAMES, build_policy, register_policy

__all__ = [
    "POLICY_NAMES",
    "Candidate",
    "Decision",
    "LoadScorer",
    "PolicyFactory",
    "RoutingPolicy",
    "RoutingRequest",
    "build_policy",
    "register_policy",
]
