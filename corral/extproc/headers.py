"""Wire names shared with Envoy's configuration (the contract in one place).

The destination header and metadata key follow the Gateway API Inference
Extension endpoint picker protocol:
https://github.com/kubernetes-sigs/gateway-api-inference-extension/tree/main/docs/proposals/004-endpoint-picker-protocol
"""

from __future__ import annotations

DESTINATION_HEADER = "x-gateway-destination-endpoint"
"""``ip:port,ip:port,...``: primary first, then ordered fallbacks for retries."""
DESTINATION_SERVED_HEADER = "x-gateway-destination-endpoint-served"
POOL_HEADER = "x-corral-pool"
"""The model pool name; Envoy's routes match it exactly after clear_route_cache."""
WORKER_HEADER = "x-corral-worker"
"""Response header: the id of the worker that served."""
REQUEST_ID_HEADER = "x-request-id"
LB_NAMESPACE = "envoy.lb"
"""Dynamic metadata namespace read by the override_host load balancer."""
EXT_PROC_ATTRIBUTES = "envoy.filters.http.ext_proc"
"""Key of ``ProcessingRequest.attributes`` holding the requested attributes."""
UPSTREAM_ADDRESS = "upstream.address"
RESPONSE_CODE = "response.code"

STRIPPED_REQUEST_HEADERS = (
    DESTINATION_HEADER,
    DESTINATION_SERVED_HEADER,
    POOL_HEADER,
    WORKER_HEADER,
)
"""Routing headers Envoy removes from client requests before ext_proc runs."""
