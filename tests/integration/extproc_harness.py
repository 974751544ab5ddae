"""A real ext_proc server on 127.0.0.1:0 and a client that speaks like Envoy."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import (
    ProcessingMode,
)
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf.struct_pb2 import Struct

from corral.config.settings import parse_settings
from corral.extproc import ExtProcServer, grpc_server_options
from corral.pool import WorkerRegistry, WorkerState, make_worker
from corral.routing.base import Candidate, Decision, RoutingRequest


class InOrderPolicy:
    """Candidates in the order given; remembers what it was asked."""

    name = "in_order"

    def __init__(self) -> None:
        self.requests: list[RoutingRequest] = []
        self.removed: list[str] = []

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], max_workers: int
    ) -> Decision:
        self.requests.append(request)
        return Decision(tuple(c.worker for c in candidates[:max_workers]), "in_order")

    def on_worker_removed(self, worker_id: str) -> None:
        self.removed.append(worker_id)


@dataclass
class RecordingBreaker:
    blocked: set[str] = field(default_factory=set)
    outcomes: list[tuple[str, int | None, bool]] = field(default_factory=list)

    def allows(self, worker_id: str) -> bool:
        return worker_id not in self.blocked

    def record_outcome(self, worker_id: str, status: int | None, reset: bool) -> None:
        self.outcomes.append((worker_id, status, reset))


def headers_message(
    headers: dict[str, str], *, end_of_stream: bool = False
) -> pb.ProcessingRequest:
    values = [HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=HeaderMap(headers=values), end_of_stream=end_of_stream
        )
    )


def picker_first(message: pb.ProcessingRequest) -> pb.ProcessingRequest:
    """The first message of a picker stream in Corral's own bootstrap: its
    ``protocol_config`` says the response body is NONE (observed elsewhere)."""
    message.protocol_config.request_body_mode = ProcessingMode.BUFFERED
    message.protocol_config.response_body_mode = ProcessingMode.NONE
    return message


def observed(
    message: pb.ProcessingRequest, ticket: str | None = None
) -> pb.ProcessingRequest:
    """A message as the observer filter sends it: ``observability_mode`` set and
    the forwarded ticket namespace in ``metadata_context`` (on every message,
    as Envoy does)."""
    message.observability_mode = True
    if ticket is not None:
        message.metadata_context.filter_metadata["corral.observe"].update(
            {"ticket": ticket}
        )
    return message


def ticket_of(decision: pb.ProcessingResponse) -> str:
    """The ticket a picker's decision leaves in dynamic metadata."""
    fields = decision.dynamic_metadata.fields
    return fields["corral.observe"].struct_value.fields["ticket"].string_value


def body_message(body: bytes, *, end_of_stream: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(
        request_body=pb.HttpBody(body=body, end_of_stream=end_of_stream)
    )


def response_headers_message(
    status: int,
    *,
    upstream: str | None = None,
    content_type: str = "application/json",
    end_of_stream: bool = False,
) -> pb.ProcessingRequest:
    values = [
        HeaderValue(key=":status", raw_value=str(status).encode()),
        HeaderValue(key="content-type", raw_value=content_type.encode()),
    ]
    request = pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=HeaderMap(headers=values), end_of_stream=end_of_stream
        )
    )
    if upstream is not None:
        attributes = Struct()
        attributes["upstream.address"] = upstream
        request.attributes["envoy.filters.http.ext_proc"].CopyFrom(attributes)
    return request


def response_body_message(
    data: bytes, *, end_of_stream: bool = False
) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(
        response_body=pb.HttpBody(body=data, end_of_stream=end_of_stream)
    )


def chat_headers(length: int | None = None, **extra: str) -> dict[str, str]:
    headers = {
        ":method": "POST",
        ":path": "/v1/chat/completions",
        ":authority": "gw",
        "content-type": "application/json",
        "x-request-id": "req-1",
    }
    if length is not None:
        headers["content-length"] = str(length)
    headers.update(extra)
    return headers


def chat_body(model: str = "m1", **extra: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    body.update(extra)
    return json.dumps(body).encode()


def set_headers(response: Any) -> dict[str, str]:
    """``{key: value}`` of a CommonResponse's header mutation."""
    return {
        o.header.key: (o.header.raw_value or o.header.value.encode()).decode()
        for o in response.header_mutation.set_headers
    }


def make_registry(ports: Sequence[int], model: str = "m1") -> WorkerRegistry:
    registry = WorkerRegistry([model])
    for port in ports:
        worker = registry.upsert(
            make_worker(f"http://127.0.0.1:{port}", models=(model,))
        )
        registry.set_state(worker.id, WorkerState.READY)
    return registry


class Harness:
    """Server and client; ``exchange`` runs one stream and returns the answers."""

    def __init__(
        self,
        registry: WorkerRegistry,
        config: dict[str, Any] | None = None,
        *,
        tokenizer_for: Any = None,
        breaker: RecordingBreaker | None = None,
        observer_grace_s: float = 3.0,
    ) -> None:
        self.registry = registry
        self.settings = parse_settings(
            config or {"models": [{"name": "m1", "aliases": ["alias-1"]}]}
        )
        self.policy = InOrderPolicy()
        self.breaker = breaker or RecordingBreaker()
        self.extproc = ExtProcServer(
            registry,
            self.settings,
            policy_for=lambda _pool: self.policy,
            tokenizer_for=tokenizer_for or (lambda _pool: None),
            breaker=self.breaker,
            observer_grace_s=observer_grace_s,
        )
        self.server: grpc.aio.Server | None = None
        self.channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> Harness:
        options = grpc_server_options(self.settings)
        self.server = grpc.aio.server(options=options)
        self.extproc.add_to_server(self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        await self.extproc.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
        self.stub = pb_grpc.ExternalProcessorStub(self.channel)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.channel is not None and self.server is not None
        await self.channel.close()
        await self.extproc.close()
        await self.server.stop(None)

    def open(self) -> Any:
        return self.stub.Process()

    async def observe(self, messages: Sequence[pb.ProcessingRequest]) -> None:
        """One observer stream: every message sent, none answered, then ended."""
        call = self.open()
        for message in messages:
            await call.write(message)
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF

    async def exchange(self, messages: Sequence[pb.ProcessingRequest]) -> list[Any]:
        call = self.open()
        answers = []
        for message in messages:
            await call.write(message)
            answers.append(await call.read())
        await call.done_writing()
        end = await call.read()
        assert end is grpc.aio.EOF
        return answers
