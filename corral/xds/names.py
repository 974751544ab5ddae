"""Envoy-side names: the shared wire names, and the control plane's cluster."""

from __future__ import annotations

from corral.pool.wire import (
    CLUSTER_HEADER,
    CLUSTER_PREFIX,
    DESTINATION_HEADER,
    LB_NAMESPACE,
    POOL_HEADER,
    SERVED_HEADER,
    STREAM_HEADER,
    STRIPPED_REQUEST_HEADERS,
    WORKER_HEADER,
    pool_cluster_name,
)

CONTROL_PLANE_CLUSTER = "corral_control_plane"
LB_METADATA_NAMESPACE = LB_NAMESPACE

__all__ = [
    "CLUSTER_HEADER",
    "CLUSTER_PREFIX",
    "CONTROL_PLANE_CLUSTER",
    "DESTINATION_HEADER",
    "LB_METADATA_NAMESPACE",
    "POOL_HEADER",
    "SERVED_HEADER",
    "STREAM_HEADER",
    "STRIPPED_REQUEST_HEADERS",
    "WORKER_HEADER",
    "pool_cluster_name",
]
