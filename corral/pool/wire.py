"""Names on the wire between Envoy, the ext_proc service and the xDS service.

Both services use these and never each other, so they live beside the registry,
where the two meet. The destination header and metadata key follow the Gateway
API Inference Extension endpoint picker protocol:
https://github.com/kubernetes-sigs/gateway-api-inference-extension/tree/main/docs/proposals/004-endpoint-picker-protocol
"""

from __future__ import annotations

import hashlib
import re

DESTINATION_HEADER = "x-gateway-destination-endpoint"
"""``ip:port,ip:port,...``: primary first, then ordered fallbacks for retries."""
SERVED_HEADER = "x-gateway-destination-endpoint-served"
LB_NAMESPACE = "envoy.lb"
"""Dynamic metadata namespace of the endpoint picker protocol."""
POOL_HEADER = "x-corral-pool"
"""The model pool's name; routes of configured pools match it exactly."""
CLUSTER_HEADER = "x-corral-cluster"
"""The pool's cluster name; one route sends any pool, configured or discovered,
to the cluster it names (``cluster_header``)."""
STREAM_HEADER = "x-corral-stream"
"""Set by the picker on streamed requests: their routes carry a first-byte limit
that would cut a long non-streamed generation."""
WORKER_HEADER = "x-corral-worker"
"""Response header: the id of the worker that served."""
REQUEST_ID_HEADER = "x-request-id"

STRIPPED_REQUEST_HEADERS = (
    DESTINATION_HEADER,
    SERVED_HEADER,
    POOL_HEADER,
    CLUSTER_HEADER,
    STREAM_HEADER,
    WORKER_HEADER,
)
"""Routing headers Envoy removes from client requests before ext_proc runs: only
Corral may steer a request."""

CLUSTER_PREFIX = "corral_pool_"
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
