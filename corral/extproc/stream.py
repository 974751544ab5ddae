"""One HTTP request's life on the ext_proc stream, phase by phase.

Phases, in the order Envoy sends them to a single filter that sees both
directions (request headers SEND, request body BUFFERED, response headers SEND,
response body STREAMED, trailers SKIP):

1. request headers: answer ``GET /v1/models`` locally; refuse a declared
   ``content-length`` above the limit (413) before any body is read; a request
   without a body is routed here, otherwise the headers pass unchanged.
2. request body (one message in BUFFERED mode): size check, parse, resolve the
   pool, tokenize, admit, pick, charge the primary; answer with the decision.
3. response headers: learn who served from ``upstream.address`` (Envoy may
   have retried onto a fallback) and move the in-flight charge there; add
   ``x-corral-worker`` and echo ``x-request-id``.
4. response body chunks: observed and answered at once, never held.
5. end: ``end_of_stream`` on the response settles the request. A stream that
   stops before it (EOF or cancellation: client gone, upstream reset) is an
   abort. Either way ``close()`` releases the charge and admission slot exactly
   once.

Corral's own bootstrap splits this: its picker filter has response headers
SKIP and response body NONE (``protocol_config`` says so, see ``modes``), so
its stream ends after phase 2 as far as messages go, and phases 3-5 arrive on
the observer filter's stream (``watch``), never awaited by Envoy. The picker
then leaves the request's books in ``ctx.meetings`` with a ticket that Envoy
carries to the observer as dynamic metadata; ``x-corral-worker`` and the
``x-request-id`` echo come from Envoy itself (route ``response_headers_to_add``
with ``%UPSTREAM_HOST%``, HCM ``always_set_request_id_in_response``).

Every request message gets exactly one answer of its phase
(https://www.envoyproxy.io/docs/envoy/v1.40.0/api-v3/service/ext_proc/v3/external_processor.proto),
except after an immediate response, which ends the exchange.

In FULL_DUPLEX_STREAMED mode (a mesh running Corral as its endpoint picker;
``protocol_config`` on the first message says so, see ``modes``) answers are
decoupled from messages: the request-headers answer is held while body chunks
are collected (unanswered) to the end of the body (``end_of_stream`` or the
request trailers); then the decision goes out as the headers answer, followed
by the body re-sent in chunks and the trailers answer (``responses.
duplex_request``). Response chunks are echoed back at once. After an immediate
response nothing more is answered: Envoy may still deliver chunks it had in
flight, and an answer to them would be a message out of order.

The mesh may narrow the eligible endpoints with a subset hint and reports the
endpoint that served in metadata; both are honoured in every mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from corral.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NoHealthyWorker,
    NotFound,
    PayloadTooLarge,
)
from corral.extproc import headers as names
from corral.extproc import responses
from corral.extproc.context import ServerContext
from corral.extproc.ledger import RequestLedger, header_map
from corral.extproc.modes import BodyModes, subset_hint
from corral.extproc.prompt import DEFAULT_ROUTING_CHARS
from corral.observability.metrics import (
    DECISION_SECONDS,
)
from corral.openai import models as model_answers
from corral.openai.requests import (
    Endpoint,
    ParsedRequest,
    endpoint_for,
    is_routable,
    parse_request,
)
from corral.pool.worker import Worker
from corral.routing.base import Candidate, RoutingRequest

logger = logging.getLogger(__name__)

MAX_WORKERS = 3
"""Primary plus fallbacks written into the destination list."""
_REQUEST_PHASES = frozenset({"request_headers", "request_body", "request_trailers"})
_NOTHING: tuple[pb.ProcessingResponse, ...] = ()


class RequestStream(RequestLedger):
    """The state of one ``Process`` stream. Event loop thread only."""

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx)
        self.endpoint = Endpoint.OTHER
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.primary_id: str | None = None
        self.modes: BodyModes | None = None
        self.subset: frozenset[str] | None = None
        self._subset_seen = False
        self._ended = False
        self._decided = False

    async def respond(
        self, request: pb.ProcessingRequest
    ) -> Sequence[pb.ProcessingResponse]:
        """Answer one message from Envoy with zero or more messages, in order.

        In Corral's own modes that is always exactly one (``handle``); in
        FULL_DUPLEX_STREAMED mode see the module notes.
        """
        modes = self.modes
        if modes is None:
            modes = self.modes = BodyModes.of(request)
        if self._ended:
            return _NOTHING
        phase = request.WhichOneof("request")
        if modes.request_duplex and phase in _REQUEST_PHASES:
            answers = await self._duplex_request(request, phase)
        elif modes.response_duplex and phase == "response_body":
            answers = [self._duplex_response_body(request.response_body)]
        else:
            answers = [await self.handle(request)]
        if modes.any_duplex and answers and answers[-1].HasField("immediate_response"):
            self._ended = True
        return answers

    async def handle(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        """Answer one message from Envoy with exactly one answer: every phase in
        Corral's own body modes, and the phases FULL_DUPLEX_STREAMED leaves as
        they are (headers and trailers of the response)."""
        phase = request.WhichOneof("request")
        if not self._subset_seen:
            self._read_subset(request)
        try:
            if phase == "request_headers":
                answer = await self._request_headers(request.request_headers)
                return answer or responses.CONTINUE_REQUEST_HEADERS
            if phase == "request_body":
                return await self._request_body(request.request_body)
            if phase == "response_headers":
                return self._response_headers(request)
            if phase == "response_body":
                return self._response_body(request.response_body)
            if phase == "request_trailers":
                return responses.CONTINUE_REQUEST_TRAILERS
            if phase == "response_trailers":
                self._finish()
                return responses.CONTINUE_RESPONSE_TRAILERS
        except GatewayError as exc:
            return self._fail(exc)
        raise ValueError(f"unexpected ext_proc message {phase!r}")

    # -- request ----------------------------------------------------------------

    def _read_subset(self, request: pb.ProcessingRequest) -> None:
        # The hint comes with the request's first message (Envoy forwards
        # metadata on the request headers); later messages cannot change it.
        if request.HasField("metadata_context"):
            self._subset_seen = True
            self.subset = subset_hint(request)

    async def _request_headers(
        self, message: pb.HttpHeaders
    ) -> pb.ProcessingResponse | None:
        """The answer to the request headers, or ``None`` when a body follows
        and the headers pass unchanged (for now)."""
        self.headers = header_map(message)
        self.request_id = self.headers.get(names.REQUEST_ID_HEADER)
        self.method = self.headers.get(":method", "")
        self.path = self.headers.get(":path", "")
        self.endpoint = endpoint_for(self.path)
        if self.endpoint is Endpoint.MESSAGES:
            self.error_dialect = "anthropic"
        if self.method in ("GET", "HEAD"):
            answer = self._models_answer()
            if answer is not None:
                return answer
        # Corral's own gateway routes the engines' inference API and nothing
        # else; a mesh decides itself what reaches its picker.
        if not is_routable(self.path) and not (self.modes and self.modes.any_duplex):
            raise NotFound(f"no such endpoint: {self.method} {self.path.split('?')[0]}")
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.ctx.max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of "
                f"{self.ctx.max_body_bytes} bytes"
            )
        if not message.end_of_stream:
            return None
        if self.endpoint is not Endpoint.OTHER and self.method == "POST":
            raise InvalidRequest("request body is empty; expected a JSON object")
        decision = await self._decide(ParsedRequest(Endpoint.OTHER))
        if decision is None:
            return responses.CONTINUE_REQUEST_HEADERS
        return responses.route(decision, on_headers=True)

    def _models_answer(self) -> pb.ProcessingResponse | None:
        model = model_answers.models_path_id(self.path)
        if model is None:
            return None
        self.finished = True
        if model == "":
            body = model_answers.list_body(self.ctx.models(), self.ctx.created)
        elif self.ctx.pool_of(model) is not None:
            body = model_answers.model_body(model, self.ctx.created)
        else:
            raise ModelNotFound(model)
        self._count(200)
        return responses.ok_json(body, self.request_id)

    def _collect(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > self.ctx.max_body_bytes:
            raise PayloadTooLarge(
                f"request body exceeds the limit of {self.ctx.max_body_bytes} bytes"
            )

    async def _request_body(self, message: pb.HttpBody) -> pb.ProcessingResponse:
        self._collect(message.body)
        if not message.end_of_stream:
            # Only in the STREAMED body mode: keep collecting; the decision
            # needs the whole body.
            return responses.CONTINUE_REQUEST_BODY
        parsed = parse_request(self.endpoint, bytes(self.body))
        decision = await self._decide(parsed)
        if decision is None:
            return responses.CONTINUE_REQUEST_BODY
        return responses.route(decision, on_headers=False)

    # -- request, FULL_DUPLEX_STREAMED -------------------------------------------

    async def _duplex_request(
        self, request: pb.ProcessingRequest, phase: str
    ) -> Sequence[pb.ProcessingResponse]:
        if not self._subset_seen:
            self._read_subset(request)
        try:
            if phase == "request_headers":
                answer = await self._request_headers(request.request_headers)
                if answer is not None:
                    self._decided = True
                    return [answer]
                return _NOTHING  # held until the body is whole
            if self._decided:
                # Trailers after a request decided on its headers: nothing
                # else is held, so they are answered alone.
                return (
                    [responses.CONTINUE_REQUEST_TRAILERS]
                    if phase == "request_trailers"
                    else _NOTHING
                )
            if phase == "request_body":
                message = request.request_body
                self._collect(message.body)
                if not message.end_of_stream:
                    return _NOTHING
                return await self._duplex_decide(trailers=False)
            # Request trailers end a body that has them: Envoy then sends no
            # end_of_stream on the body chunks.
            return await self._duplex_decide(trailers=True)
        except GatewayError as exc:
            return [self._fail(exc)]

    async def _duplex_decide(self, *, trailers: bool) -> list[pb.ProcessingResponse]:
        self._decided = True
        body = bytes(self.body)
        decision = await self._decide(parse_request(self.endpoint, body))
        self.body = bytearray()  # re-sent below; no need to hold two copies
        return responses.duplex_request(decision, body, trailers=trailers)

    # -- the decision -------------------------------------------------------------

    def _eligible(self, pool: str) -> list[Candidate]:
        """Ready, allowed workers of the pool, inside the mesh's subset hint."""
        candidates = self.ctx.candidates(pool)
        subset = self.subset
        if subset is None:
            if not candidates:
                raise NoHealthyWorker(
                    f"no healthy worker serves model `{pool}`", retry_after_s=1
                )
            return candidates
        inside = [c for c in candidates if c.worker.address in subset]
        if not inside:
            # The protocol: a hint that leaves nothing eligible is a 503.
            raise NoHealthyWorker(
                f"no healthy worker of model `{pool}` is among the "
                f"{len(subset)} endpoint(s) the proxy allowed",
                retry_after_s=1,
            )
        return inside

    async def _decide(self, parsed: ParsedRequest) -> responses.Route | None:
        """Pick the workers and charge the primary; ``None`` when the request
        names no model and there is no default pool: it then passes through
        and Envoy's catch-all route decides."""
        ctx = self.ctx
        self.pool = pool = ctx.resolve(parsed.model, parsed.endpoint)
        if pool is None:
            return None
        policy = ctx.policy(pool)
        self.policy_name = policy.name
        prompt = ctx.tokenizer(pool)
        tokens: Sequence[int] | None = None
        count: int | None = None
        if prompt is not None:
            encoded = await prompt.tokens(parsed)
            if encoded is not None:
                tokens, count = encoded.ids, encoded.count
        elif parsed.token_ids is not None:
            tokens = parsed.token_ids
        text = parsed.routing_text
        if count is None:
            count = len(tokens) if tokens is not None else len(text or self.body) // 4
        if text is not None and len(text) > DEFAULT_ROUTING_CHARS:
            text = text[:DEFAULT_ROUTING_CHARS]  # routing matches prefixes only
        key_header = getattr(policy, "header", None)
        routing = RoutingRequest(
            model=pool,
            tokens=tokens,
            text=text,
            token_count=count,
            routing_key=self.headers.get(key_header) if key_header else None,
            headers=self.headers,
        )
        self._release_admission = await ctx.admission.acquire(pool, routing)
        candidates = self._eligible(pool)
        began = time.perf_counter()
        decision = policy.pick(routing, candidates, MAX_WORKERS)
        DECISION_SECONDS.labels(self.policy_name).observe(time.perf_counter() - began)
        workers: list[Worker] = []
        for worker in decision.workers:
            if len(workers) < MAX_WORKERS and all(w.id != worker.id for w in workers):
                workers.append(worker)
        if not workers:
            raise NoHealthyWorker(
                f"no worker chosen for model `{pool}`", retry_after_s=1
            )
        self.reason = decision.reason
        self.tokens = count
        self.primary_id = workers[0].id
        self._charge(workers[0].id)
        ticket: str | None = None
        if self.modes is not None and self.modes.observed_elsewhere:
            self.meeting = ctx.meetings.announce(self.request_id, self)
            ticket = self.meeting[1]
        logger.debug(
            "request %s model=%s worker=%s fallbacks=%s reason=%s tokens=%d",
            self.request_id,
            pool,
            workers[0].id,
            ",".join(w.id for w in workers[1:]) or "-",
            decision.reason,
            count,
        )
        return responses.Route(
            tuple(w.address for w in workers), pool, stream=parsed.stream, ticket=ticket
        )

    # -- response ---------------------------------------------------------------

    def _response_headers(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        if self.meeting is not None:
            # The observer's stream keeps these books; nothing to add here.
            return responses.CONTINUE_RESPONSE_HEADERS
        self.observe_response_headers(request)
        added: dict[str, str] = {}
        if self.worker_id is not None:
            added[names.WORKER_HEADER] = self.worker_id
        if self.request_id:
            added[names.REQUEST_ID_HEADER] = self.request_id
        return responses.response_headers(added)

    def _response_body(self, message: pb.HttpBody) -> pb.ProcessingResponse:
        if self.meeting is None:
            self.observe_response_body(message)
        return responses.CONTINUE_RESPONSE_BODY

    def _duplex_response_body(self, message: pb.HttpBody) -> pb.ProcessingResponse:
        # Echoed at once, never held: a held chunk would stall the stream.
        self.observe_response_body(message)
        return responses.duplex_response_body(
            message.body, end_of_stream=message.end_of_stream
        )

    # -- the end ----------------------------------------------------------------

    def close(self) -> None:
        """The picker's gRPC stream is over. A request whose response another
        stream observes is left to it (``meeting.Meetings.picker_ended``);
        otherwise, without a finished response, an abort."""
        if self.meeting is not None and not self.finished:
            self.ctx.meetings.picker_ended(self.meeting)
            return
        super().close()
