"""What a stream's first message says about it: body modes and mesh metadata.

Envoy reports the body modes of its ext_proc filter in
``ProcessingRequest.protocol_config`` on the first message of each stream
(https://www.envoyproxy.io/docs/envoy/v1.40.0/api-v3/service/ext_proc/v3/external_processor.proto).
Corral's own bootstrap gives its picker request BUFFERED and response NONE (a
second filter in observability mode watches the response, see ``watch``);
meshes that run Corral as their endpoint picker (Istio, Envoy Gateway) use
FULL_DUPLEX_STREAMED both ways, which changes how each phase is answered.

The endpoint picker protocol of the Gateway API Inference Extension
(https://github.com/kubernetes-sigs/gateway-api-inference-extension/tree/main/docs/proposals/004-endpoint-picker-protocol)
adds two pieces of metadata read here: the subset hint (the endpoints the proxy
allows, on the request) and the served endpoint (the host that really answered,
on the response).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import (
    ProcessingMode,
)
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.struct_pb2 import Value

from corral.extproc import headers as names

logger = logging.getLogger(__name__)

FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
NONE = ProcessingMode.NONE


@dataclass(frozen=True, slots=True)
class BodyModes:
    """Whether each body direction of a stream is FULL_DUPLEX_STREAMED, and
    whether the response is watched by another stream (the observer filter)."""

    request_duplex: bool = False
    response_duplex: bool = False
    observed_elsewhere: bool = False
    """The response body mode is NONE: this stream never sees the response, so
    the request's books are settled by the observer's stream (``watch``)."""

    @property
    def any_duplex(self) -> bool:
        return self.request_duplex or self.response_duplex

    @classmethod
    def of(cls, request: pb.ProcessingRequest) -> BodyModes:
        """The modes announced by a stream's first message. Without
        ``protocol_config`` (older Envoys, hand-made clients) the single-filter
        contract applies: request BUFFERED, response STREAMED on this stream."""
        if not request.HasField("protocol_config"):
            return DEFAULT_MODES
        config = request.protocol_config
        return cls(
            request_duplex=config.request_body_mode == FULL_DUPLEX,
            response_duplex=config.response_body_mode == FULL_DUPLEX,
            observed_elsewhere=config.response_body_mode == NONE,
        )


DEFAULT_MODES = BodyModes()


def _strings(value: Value) -> list[str] | None:
    """A list of strings, or one comma-separated string, as a list."""
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return [
            item.string_value.strip()
            for item in value.list_value.values
            if item.WhichOneof("kind") == "string_value" and item.string_value.strip()
        ]
    if kind == "string_value":
        return [part.strip() for part in value.string_value.split(",") if part.strip()]
    return None


def subset_hint(request: pb.ProcessingRequest) -> frozenset[str] | None:
    """The ``ip:port`` endpoints a mesh allows for this request, or ``None``
    when it sent no hint (every ready worker is then eligible).

    An empty set is a hint too: nothing is eligible, and the request is refused
    with 503, as the protocol specifies.
    """
    filter_metadata = request.metadata_context.filter_metadata
    if names.SUBSET_NAMESPACE not in filter_metadata:
        return None
    fields = filter_metadata[names.SUBSET_NAMESPACE].fields
    if names.SUBSET_KEY not in fields:
        return None
    endpoints = _strings(fields[names.SUBSET_KEY])
    if endpoints is None:
        logger.warning(
            "subset hint %s/%s is neither a list nor a string; ignored",
            names.SUBSET_NAMESPACE,
            names.SUBSET_KEY,
        )
        return None
    return frozenset(endpoints)


def served_endpoint(request: pb.ProcessingRequest) -> str | None:
    """The endpoint that served, from ``envoy.lb`` /
    ``x-gateway-destination-endpoint-served`` (protocol v1.0.0; plain Envoy
    writes it with override_host's ``selected_host_key``), or ``None``."""
    filter_metadata = request.metadata_context.filter_metadata
    if names.LB_NAMESPACE not in filter_metadata:
        return None
    fields = filter_metadata[names.LB_NAMESPACE].fields
    if names.DESTINATION_SERVED_HEADER not in fields:
        return None
    endpoints = _strings(fields[names.DESTINATION_SERVED_HEADER])
    return endpoints[0] if endpoints else None
