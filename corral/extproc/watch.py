"""The observer filter's stream: a request's response, watched, never held.

Corral's own bootstrap puts a second ext_proc filter after the picker with
``observability_mode: true``
(https://www.envoyproxy.io/docs/envoy/v1.40.0/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto):
Envoy sends it the request headers and the whole response (headers with the
``upstream.address`` attribute, body STREAMED) and waits for no answer, so
observing costs the response nothing. Every message carries
``observability_mode = true``, which is how ``service`` tells this stream
from a picker's. Nothing is ever written back.

What was seen on Envoy 1.40 (picker: request BUFFERED, response SKIP/NONE;
observer as in ``corral.xds.bootstrap``):

- the observer's request headers come after the picker's decision and carry
  it: the picker's header mutations (``x-gateway-destination-endpoint``...)
  and, in ``metadata_context``, the picker's dynamic metadata of the
  forwarded namespace (the ticket), on every message of the stream;
- they may reach the server after the picker's stream has already ended
  (a 1 ms request: picker EOF first, observer headers 0.4 ms later);
- then response headers (``upstream.address`` set; empty for a local reply),
  the body chunks as the upstream wrote them, and an empty chunk with
  ``end_of_stream``; the stream itself ends ``deferred_close_timeout`` after
  the HTTP stream (EOF);
- a client that leaves mid-stream: no ``end_of_stream`` chunk; the stream
  still ends at ``deferred_close_timeout``.

A stream whose request headers name no ticket (the picker did not route it:
a pass-through, an error, a local reply) or a ticket no routed request is
waiting under is ignored: its remaining messages are read and dropped.
"""

from __future__ import annotations

import logging

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from corral.extproc import headers as names
from corral.extproc.context import ServerContext
from corral.extproc.ledger import RequestLedger

logger = logging.getLogger(__name__)


def _ticket(request: pb.ProcessingRequest) -> str | None:
    filter_metadata = request.metadata_context.filter_metadata
    if names.TICKET_NAMESPACE not in filter_metadata:
        return None
    value = filter_metadata[names.TICKET_NAMESPACE].fields.get(names.TICKET_KEY)
    if value is None or value.WhichOneof("kind") != "string_value":
        return None
    return str(value.string_value)


def _request_id(message: pb.HttpHeaders) -> str | None:
    for header in message.headers.headers:
        if header.key.lower() == names.REQUEST_ID_HEADER:
            return str(header.raw_value.decode("utf-8", "replace") or header.value)
    return None


class ObserverStream:
    """One observer stream: finds its request's ledger, then feeds it the
    response through the ledger's one response code path. Loop thread only."""

    __slots__ = ("_ctx", "_ignored", "ledger")

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self.ledger: RequestLedger | None = None
        self._ignored = False

    def feed(self, request: pb.ProcessingRequest) -> None:
        """One message from Envoy; never answered."""
        ledger = self.ledger
        if ledger is None:
            if not self._ignored:
                self._attach(request)
            return
        phase = request.WhichOneof("request")
        if phase == "response_body":
            ledger.observe_response_body(request.response_body)
        elif phase == "response_headers":
            ledger.observe_response_headers(request)
        elif phase == "response_trailers":
            ledger.observe_response_body(pb.HttpBody(end_of_stream=True))

    def _attach(self, request: pb.ProcessingRequest) -> None:
        # Only the stream's first message can attach it; anything else means
        # the picker did not route this request.
        self._ignored = True
        if request.WhichOneof("request") != "request_headers":
            return
        ticket = _ticket(request)
        if ticket is None:
            return
        request_id = _request_id(request.request_headers)
        claimed = self._ctx.meetings.claim(request_id, ticket)
        if claimed is None:
            logger.debug("observer for %s: no routed request waits", request_id)
            return
        assert isinstance(claimed, RequestLedger)
        self.ledger = claimed
        self._ignored = False

    def close(self) -> None:
        """The observer's stream is over: without the response's end of
        stream, the request was aborted (the ledger releases once)."""
        if self.ledger is not None:
            self.ledger.abort()
