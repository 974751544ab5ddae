"""Builders for the ``ProcessingResponse`` messages the server sends to Envoy.

Protocol: https://www.envoyproxy.io/docs/envoy/v1.40.0/api-v3/service/ext_proc/v3/external_processor.proto
Every request message Envoy sends is answered by exactly one response of the
matching phase (or by an ``ImmediateResponse``, which ends the HTTP exchange).
Header values are written to ``raw_value``: Envoy sends and accepts header
values as raw bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct

from corral.errors import GatewayError
from corral.extproc import headers as names
from corral.pool.wire import pool_cluster_name

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# Constant answers, built once: grpc serialises a message on every write, so
# sharing these read-only objects between streams is safe.
CONTINUE_REQUEST_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
CONTINUE_REQUEST_BODY = pb.ProcessingResponse(request_body=pb.BodyResponse())
CONTINUE_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
CONTINUE_RESPONSE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse())
CONTINUE_REQUEST_TRAILERS = pb.ProcessingResponse(
    request_trailers=pb.TrailersResponse()
)
CONTINUE_RESPONSE_TRAILERS = pb.ProcessingResponse(
    response_trailers=pb.TrailersResponse()
)


def set_headers(values: Iterable[tuple[str, str]]) -> list[HeaderValueOption]:
    return [
        HeaderValueOption(
            header=HeaderValue(key=key, raw_value=value.encode()),
            append_action=_OVERWRITE,
        )
        for key, value in values
    ]


def route(
    endpoints: Iterable[str], pool: str, *, on_headers: bool, stream: bool = False
) -> pb.ProcessingResponse:
    """The routing decision, as the wire contract fixes it.

    Request headers ``x-gateway-destination-endpoint`` (the ordered list),
    ``x-corral-pool`` and ``x-corral-cluster``, the same list in dynamic
    metadata ``envoy.lb`` (endpoint picker protocol), and ``clear_route_cache``
    so that Envoy picks the route again, now by the pool headers;
    ``x-corral-stream`` on streamed requests selects the routes whose retry
    policy has a first-byte limit. Sent on the request body, or on the
    request headers when the request has no body.
    """
    destination = ",".join(endpoints)
    values = [
        (names.DESTINATION_HEADER, destination),
        (names.POOL_HEADER, pool),
        (names.CLUSTER_HEADER, pool_cluster_name(pool)),
    ]
    if stream:
        values.append((names.STREAM_HEADER, "1"))
    common = pb.CommonResponse(
        header_mutation=pb.HeaderMutation(set_headers=set_headers(values)),
        clear_route_cache=True,
    )
    metadata = Struct()
    metadata.get_or_create_struct(names.LB_NAMESPACE)[names.DESTINATION_HEADER] = (
        destination
    )
    if on_headers:
        return pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(response=common),
            dynamic_metadata=metadata,
        )
    return pb.ProcessingResponse(
        request_body=pb.BodyResponse(response=common), dynamic_metadata=metadata
    )


def response_headers(values: Mapping[str, str]) -> pb.ProcessingResponse:
    """Add response headers (the serving worker, the request id)."""
    if not values:
        return CONTINUE_RESPONSE_HEADERS
    mutation = pb.HeaderMutation(set_headers=set_headers(values.items()))
    return pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(
            response=pb.CommonResponse(header_mutation=mutation)
        )
    )


def immediate(
    status: int, body: bytes, headers: Mapping[str, str], *, details: str = ""
) -> pb.ProcessingResponse:
    """End the exchange with a local reply; the upstream is never contacted."""
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=HttpStatus(code=status),
            headers=pb.HeaderMutation(set_headers=set_headers(headers.items())),
            body=body,
            details=details,
        )
    )


def error_response(
    error: GatewayError, request_id: str | None = None
) -> pb.ProcessingResponse:
    """The one translation of a ``GatewayError`` into Envoy's terms: an
    immediate response carrying the OpenAI error JSON, its status and headers
    (``retry-after`` when the error has one), and the request id when known."""
    headers = error.headers()
    if request_id:
        headers[names.REQUEST_ID_HEADER] = request_id
    return immediate(
        error.status, error.body(), headers, details=f"corral_{error.code or 'error'}"
    )


def ok_json(body: bytes, request_id: str | None = None) -> pb.ProcessingResponse:
    """A 200 JSON answer made by the gateway itself (``/v1/models``)."""
    headers = {"content-type": "application/json"}
    if request_id:
        headers[names.REQUEST_ID_HEADER] = request_id
    return immediate(200, body, headers, details="corral_local")
