"""Builders for the ``ProcessingResponse`` messages the server sends to Envoy.

Protocol: https://www.envoyproxy.io/docs/envoy/v1.40.0/api-v3/service/ext_proc/v3/external_processor.proto
With Corral's own body modes (request BUFFERED, response STREAMED) every
request message Envoy sends is answered by exactly one response of the matching
phase (or by an ``ImmediateResponse``, which ends the HTTP exchange); in
FULL_DUPLEX_STREAMED mode the answers are built by ``duplex_request`` and
``duplex_response_body``.
Header values are written to ``raw_value``: Envoy sends and accepts header
values as raw bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct

from corral.errors import GatewayError
from corral.extproc import headers as names
from corral.pool.wire import pool_cluster_name

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

STREAMED_CHUNK_BYTES = 62_000
"""Largest body chunk re-sent in FULL_DUPLEX_STREAMED mode. Envoy recommends at
most 64 KiB per streamed response; some Envoy-based proxies cap chunks there, so
this keeps clear of the limit (the value GIE's endpoint picker uses)."""

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


@dataclass(frozen=True, slots=True)
class Route:
    """A routing decision: the ordered destination list and the request's pool."""

    endpoints: tuple[str, ...]
    pool: str
    stream: bool = False
    ticket: str | None = None
    """Set when the response is observed by another stream (``meeting``)."""


def route_parts(decision: Route) -> tuple[pb.CommonResponse, Struct]:
    """The decision as the wire contract fixes it, in either body mode.

    Request headers ``x-gateway-destination-endpoint`` (the ordered list),
    ``x-corral-pool`` and ``x-corral-cluster``, the same list in dynamic
    metadata ``envoy.lb`` (the endpoint picker protocol requires header and
    metadata to carry the same value), and ``clear_route_cache`` so that Envoy
    picks the route again, now by the pool headers; ``x-corral-stream`` on
    streamed requests selects the routes whose retry policy has a first-byte
    limit.
    """
    destination = ",".join(decision.endpoints)
    values = [
        (names.DESTINATION_HEADER, destination),
        (names.POOL_HEADER, decision.pool),
        (names.CLUSTER_HEADER, pool_cluster_name(decision.pool)),
    ]
    if decision.stream:
        values.append((names.STREAM_HEADER, "1"))
    common = pb.CommonResponse(
        header_mutation=pb.HeaderMutation(set_headers=set_headers(values)),
        clear_route_cache=True,
    )
    metadata = Struct()
    metadata.get_or_create_struct(names.LB_NAMESPACE)[names.DESTINATION_HEADER] = (
        destination
    )
    if decision.ticket is not None:
        metadata.get_or_create_struct(names.TICKET_NAMESPACE)[names.TICKET_KEY] = (
            decision.ticket
        )
    return common, metadata


def route(decision: Route, *, on_headers: bool) -> pb.ProcessingResponse:
    """The routing decision in Corral's own contract (request body BUFFERED):
    sent on the request body, or on the request headers when the request has
    no body. See ``route_parts`` for what it carries; with a ticket, the
    metadata also carries it in ``TICKET_NAMESPACE`` for the observer."""
    common, metadata = route_parts(decision)
    if on_headers:
        return pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(response=common),
            dynamic_metadata=metadata,
        )
    return pb.ProcessingResponse(
        request_body=pb.BodyResponse(response=common), dynamic_metadata=metadata
    )


def duplex_request(
    decision: Route | None, body: bytes, *, trailers: bool
) -> list[pb.ProcessingResponse]:
    """Every answer of a FULL_DUPLEX_STREAMED request, once its body is whole.

    Envoy forwards nothing of a duplex request until the server answers, and
    the answers must go headers, then body, then trailers
    (https://www.envoyproxy.io/docs/envoy/v1.40.0/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto):
    the held ``HeadersResponse`` (with the decision, or unchanged when the
    request passes through unrouted), then the body re-sent as
    ``streamed_response`` chunks, which Envoy requires in this mode (a body not
    re-sent reaches the upstream empty). Chunks hold at most
    ``STREAMED_CHUNK_BYTES``. Exactly one chunk carries ``end_of_stream``, the
    last, unless the request has trailers: then the ``TrailersResponse`` ends
    the request and no chunk does.
    """
    if decision is None:
        answers = [CONTINUE_REQUEST_HEADERS]
    else:
        common, metadata = route_parts(decision)
        answers = [
            pb.ProcessingResponse(
                request_headers=pb.HeadersResponse(response=common),
                dynamic_metadata=metadata,
            )
        ]
    view = memoryview(body)
    pieces = [
        bytes(view[at : at + STREAMED_CHUNK_BYTES])
        for at in range(0, len(body), STREAMED_CHUNK_BYTES)
    ]
    if not pieces and not trailers:
        pieces = [b""]  # the end of the body must still be said, once
    last = len(pieces) - 1
    for index, piece in enumerate(pieces):
        answers.append(
            _streamed(piece, end_of_stream=index == last and not trailers, request=True)
        )
    if trailers:
        answers.append(CONTINUE_REQUEST_TRAILERS)
    return answers


def duplex_response_body(data: bytes, *, end_of_stream: bool) -> pb.ProcessingResponse:
    """A FULL_DUPLEX_STREAMED response chunk echoed unchanged, at once."""
    return _streamed(data, end_of_stream=end_of_stream, request=False)


def _streamed(
    data: bytes, *, end_of_stream: bool, request: bool
) -> pb.ProcessingResponse:
    body = pb.BodyResponse(
        response=pb.CommonResponse(
            body_mutation=pb.BodyMutation(
                streamed_response=pb.StreamedBodyResponse(
                    body=data, end_of_stream=end_of_stream
                )
            )
        )
    )
    if request:
        return pb.ProcessingResponse(request_body=body)
    return pb.ProcessingResponse(response_body=body)


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
    error: GatewayError, request_id: str | None = None, *, dialect: str = "openai"
) -> pb.ProcessingResponse:
    """The one translation of a ``GatewayError`` into Envoy's terms: an
    immediate response carrying the error JSON in the request's API dialect
    (OpenAI's, or Anthropic's for ``/v1/messages``), its status and headers
    (``retry-after`` when the error has one), and the request id when known."""
    headers = error.headers()
    if request_id:
        headers[names.REQUEST_ID_HEADER] = request_id
    return immediate(
        error.status,
        error.body(dialect=dialect),
        headers,
        details=f"corral_{error.code or 'error'}",
    )


def ok_json(body: bytes, request_id: str | None = None) -> pb.ProcessingResponse:
    """A 200 JSON answer made by the gateway itself (``/v1/models``)."""
    headers = {"content-type": "application/json"}
    if request_id:
        headers[names.REQUEST_ID_HEADER] = request_id
    return immediate(200, body, headers, details="corral_local")
