"""Wire names the ext_proc service uses: the shared ones, and its own."""

from __future__ import annotations

from corral.pool.wire import (
    CLUSTER_HEADER,
    DESTINATION_HEADER,
    LB_NAMESPACE,
    POOL_HEADER,
    REQUEST_ID_HEADER,
    STREAM_HEADER,
    STRIPPED_REQUEST_HEADERS,
    WORKER_HEADER,
)
from corral.pool.wire import SERVED_HEADER as DESTINATION_SERVED_HEADER

EXT_PROC_ATTRIBUTES = "envoy.filters.http.ext_proc"
"""Key of ``ProcessingRequest.attributes`` holding the requested attributes."""
UPSTREAM_ADDRESS = "upstream.address"
RESPONSE_CODE = "response.code"

TICKET_NAMESPACE = "corral.observe"
"""Dynamic metadata namespace in which the picker leaves a request's ticket for
the observer filter (the bootstrap forwards it to the observer; clients cannot
write dynamic metadata). Must equal ``corral.xds.bootstrap.TICKET_NAMESPACE``."""
TICKET_KEY = "ticket"

SUBSET_NAMESPACE = "envoy.lb.subset_hint"
"""Filter metadata namespace in which a mesh narrows the endpoints the picker
may choose (endpoint picker protocol, "subset hint")."""
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
"""Key in ``SUBSET_NAMESPACE``: a list of ``ip:port`` strings."""

__all__ = [
    "CLUSTER_HEADER",
    "DESTINATION_HEADER",
    "DESTINATION_SERVED_HEADER",
    "EXT_PROC_ATTRIBUTES",
    "LB_NAMESPACE",
    "POOL_HEADER",
    "REQUEST_ID_HEADER",
    "RESPONSE_CODE",
    "STREAM_HEADER",
    "STRIPPED_REQUEST_HEADERS",
    "SUBSET_KEY",
    "SUBSET_NAMESPACE",
    "TICKET_KEY",
    "TICKET_NAMESPACE",
    "UPSTREAM_ADDRESS",
    "WORKER_HEADER",
]
