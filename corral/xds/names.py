"""Envoy-side names derived from model names, shared with the bootstrap."""

from __future__ import annotations

import hashlib
import re

CLUSTER_PREFIX = "corral_pool_"
CONTROL_PLANE_CLUSTER = "corral_control_plane"

DESTINATION_HEADER = "x-gateway-destination-endpoint"
"""Endpoint picker protocol: ordered ``ip:port`` list the override_host LB reads."""
SERVED_HEADER = "x-gateway-destination-endpoint-served"
POOL_HEADER = "x-corral-pool"
WORKER_HEADER = "x-corral-worker"
LB_METADATA_NAMESPACE = "envoy.lb"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def pool_cluster_name(model: str) -> str:
    """The EDS cluster name of a model pool.

    ``corral_pool_<model>`` with every character outside ``[A-Za-z0-9_.-]``
    replaced by ``_``; when anything was replaced, ``_<first 8 hex of
    sha256(model)>`` is appended so that distinct models never share a cluster.
    """
    safe = _UNSAFE.sub("_", model)
    if safe != model:
        digest = hashlib.sha256(model.encode("utf-8")).hexdigest()[:8]
        safe = f"{safe}_{digest}"
    return CLUSTER_PREFIX + safe
