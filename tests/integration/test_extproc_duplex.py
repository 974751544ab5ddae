"""The ext_proc stream in FULL_DUPLEX_STREAMED mode, driven over real gRPC on
127.0.0.1 the way a mesh's Envoy drives its endpoint picker: ``protocol_config``
on the first message, bodies in several chunks, answers decoupled from messages.

Each test writes the whole message sequence, half-closes, and reads every
answer up to the end of the stream, so the answers' exact number and order are
asserted, not only their content.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue, Metadata
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import (
    ProcessingMode,
)
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.struct_pb2 import Struct

from corral.extproc.responses import STREAMED_CHUNK_BYTES
from corral.observability.metrics import ABORTS, OUTPUT_TOKENS
from tests.integration.extproc_harness import (
    Harness,
    body_message,
    chat_body,
    chat_headers,
    headers_message,
    make_registry,
    response_body_message,
    response_headers_message,
    set_headers,
)

pytestmark = pytest.mark.timeout(30)

DUPLEX = pb.ProtocolConfiguration(
    request_body_mode=ProcessingMode.FULL_DUPLEX_STREAMED,
    response_body_mode=ProcessingMode.FULL_DUPLEX_STREAMED,
)
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"


def first(message: pb.ProcessingRequest, subset: Any = None) -> pb.ProcessingRequest:
    """The stream's first message as a duplex mesh sends it: protocol_config,
    and the subset hint in the metadata context when given."""
    message.protocol_config.CopyFrom(DUPLEX)
    if subset is not None:
        add_metadata(message, SUBSET_NAMESPACE, {SUBSET_KEY: subset})
    return message


def add_metadata(
    message: pb.ProcessingRequest, namespace: str, values: dict[str, Any]
) -> pb.ProcessingRequest:
    struct = Struct()
    struct.update(values)
    message.metadata_context.MergeFrom(Metadata(filter_metadata={namespace: struct}))
    return message


def chunks(body: bytes, sizes: Sequence[int]) -> list[pb.ProcessingRequest]:
    """The body cut at the given sizes (the rest goes last), last one with
    end_of_stream, as Envoy relays a body arriving in pieces."""
    messages, at = [], 0
    for size in sizes:
        messages.append(body_message(body[at : at + size], end_of_stream=False))
        at += size
    messages.append(body_message(body[at:], end_of_stream=True))
    return messages


def trailers_message() -> pb.ProcessingRequest:
    trailers = HeaderMap(headers=[HeaderValue(key="x-t", raw_value=b"1")])
    return pb.ProcessingRequest(request_trailers=pb.HttpTrailers(trailers=trailers))


async def run(h: Harness, messages: Sequence[pb.ProcessingRequest]) -> list[Any]:
    """Write everything, half-close, and collect every answer until EOF."""
    call = h.open()
    for message in messages:
        await call.write(message)
    await call.done_writing()
    answers = []
    while (answer := await call.read()) is not grpc.aio.EOF:
        answers.append(answer)
    return answers


def streamed(answer: Any, phase: str) -> pb.StreamedBodyResponse:
    assert answer.WhichOneof("response") == phase
    mutation = getattr(answer, phase).response.body_mutation
    assert mutation.WhichOneof("mutation") == "streamed_response"
    return mutation.streamed_response


def destination_metadata(answer: Any) -> str:
    lb = answer.dynamic_metadata.fields["envoy.lb"].struct_value
    return lb.fields["x-gateway-destination-endpoint"].string_value


async def _poll(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


async def test_large_body_in_pieces_gets_headers_then_body_resent_once_ended():
    prompt = "duplex " * (1_200_000 // 7)
    body = chat_body(messages=[{"role": "user", "content": prompt}])
    assert len(body) > 1024 * 1024
    registry = make_registry([9001, 9002])
    async with Harness(registry) as h:
        answers = await run(
            h,
            [
                first(headers_message(chat_headers())),
                *chunks(body, [1, 70_000, 500_000]),
            ],
        )
    headers = answers[0]
    assert headers.WhichOneof("response") == "request_headers"
    common = headers.request_headers.response
    assert set_headers(common)["x-gateway-destination-endpoint"] == (
        "127.0.0.1:9001,127.0.0.1:9002"
    )
    assert destination_metadata(headers) == "127.0.0.1:9001,127.0.0.1:9002"
    assert common.clear_route_cache is True
    pieces = [streamed(a, "request_body") for a in answers[1:]]
    assert len(pieces) == -(-len(body) // STREAMED_CHUNK_BYTES)
    assert all(len(p.body) <= STREAMED_CHUNK_BYTES for p in pieces)
    assert b"".join(p.body for p in pieces) == body
    assert [p.end_of_stream for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert registry.load("127.0.0.1:9001").requests == 0  # stream over: released


async def test_body_ended_by_trailers_gets_trailers_answer_and_no_end_of_stream():
    body = chat_body()
    async with Harness(make_registry([9001])) as h:
        messages = [first(headers_message(chat_headers())), *chunks(body, [10])]
        messages[-1].request_body.end_of_stream = False  # trailers end this one
        answers = await run(h, [*messages, trailers_message()])
    assert [a.WhichOneof("response") for a in answers] == [
        "request_headers",
        "request_body",
        "request_trailers",
    ]
    piece = streamed(answers[1], "request_body")
    assert (piece.body, piece.end_of_stream) == (body, False)


async def test_request_without_body_is_decided_on_its_headers():
    async with Harness(make_registry([9001])) as h:
        (answer,) = await run(
            h,
            [
                first(
                    headers_message(
                        {":method": "GET", ":path": "/health"}, end_of_stream=True
                    )
                )
            ],
        )
    common = answer.request_headers.response
    assert set_headers(common)["x-gateway-destination-endpoint"] == "127.0.0.1:9001"


async def test_oversize_body_gets_one_413_and_later_chunks_no_answer():
    config = {"models": [{"name": "m1"}], "limits": {"max_body_bytes": 4096}}
    registry = make_registry([9001])
    async with Harness(registry, config) as h:
        answers = await run(
            h,
            [
                first(headers_message(chat_headers())),
                body_message(b"x" * 3000, end_of_stream=False),
                body_message(b"x" * 3000, end_of_stream=False),
                body_message(b"x" * 10, end_of_stream=True),
            ],
        )
    (answer,) = answers
    assert answer.immediate_response.status.code == 413
    error = json.loads(answer.immediate_response.body)["error"]
    assert error["code"] == "request_too_large"
    assert registry.load("127.0.0.1:9001").requests == 0


@pytest.mark.parametrize(
    ("case", "status"), [("bad_json", 400), ("unknown_model", 404)]
)
async def test_errors_are_immediate_openai_json_after_the_body(case: str, status: int):
    body = b'{"model": "m1", "mess' if case == "bad_json" else chat_body("nope")
    async with Harness(make_registry([9001])) as h:
        (answer,) = await run(
            h, [first(headers_message(chat_headers())), *chunks(body, [5])]
        )
    assert answer.immediate_response.status.code == status
    error = json.loads(answer.immediate_response.body)["error"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("duplex", [True, False], ids=["duplex", "buffered"])
async def test_subset_hint_restricts_the_pick_to_its_endpoints(duplex: bool):
    registry = make_registry([9001, 9002, 9003])
    subset = ["127.0.0.1:9003", "127.0.0.1:9002", "10.0.0.9:80"]
    request = headers_message(chat_headers())
    if duplex:
        first(request, subset)
    else:
        add_metadata(request, SUBSET_NAMESPACE, {SUBSET_KEY: subset})
    async with Harness(registry) as h:
        answers = await run(h, [request, body_message(chat_body())])
    decision = answers[0] if duplex else answers[1]
    common = (decision.request_headers if duplex else decision.request_body).response
    # The policy keeps its own order, restricted to the hint.
    assert set_headers(common)["x-gateway-destination-endpoint"] == (
        "127.0.0.1:9002,127.0.0.1:9003"
    )
    assert destination_metadata(decision) == "127.0.0.1:9002,127.0.0.1:9003"


@pytest.mark.parametrize("subset", [["127.0.0.1:9999"], []], ids=["outside", "empty"])
async def test_subset_hint_without_eligible_worker_is_503(subset: list[str]):
    registry = make_registry([9001, 9002])
    async with Harness(registry) as h:
        (answer,) = await run(
            h,
            [first(headers_message(chat_headers()), subset), body_message(chat_body())],
        )
    assert answer.immediate_response.status.code == 503
    assert json.loads(answer.immediate_response.body)["error"]["code"] == (
        "no_healthy_worker"
    )
    assert registry.load("127.0.0.1:9001").requests == 0


async def test_served_endpoint_metadata_moves_charge_and_chunks_are_echoed():
    registry = make_registry([9001, 9002])
    before = OUTPUT_TOKENS.labels("m1")._value.get()
    events = [
        b'data: {"choices":[{"delta":{"content":"h',
        b'i"}}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'
        b"data: [DONE]\n\n",
    ]
    async with Harness(registry) as h:
        call = h.open()
        await call.write(first(headers_message(chat_headers())))
        await call.write(body_message(chat_body(stream=True)))
        decision = await call.read()
        assert decision.WhichOneof("response") == "request_headers"
        assert streamed(await call.read(), "request_body").end_of_stream
        assert registry.load("127.0.0.1:9001").requests == 1
        # The mesh retried onto 9002 and says so in metadata only (no
        # upstream.address attribute).
        served = response_headers_message(200, content_type="text/event-stream")
        add_metadata(
            served,
            "envoy.lb",
            {"x-gateway-destination-endpoint-served": "127.0.0.1:9002"},
        )
        await call.write(served)
        headers_answer = await call.read()
        assert set_headers(headers_answer.response_headers.response)[
            "x-corral-worker"
        ] == ("127.0.0.1:9002")
        assert registry.load("127.0.0.1:9001").requests == 0
        assert registry.load("127.0.0.1:9002").requests == 1
        for index, data in enumerate(events):
            last = index == len(events) - 1
            await call.write(response_body_message(data, end_of_stream=last))
            echo = streamed(await call.read(), "response_body")
            assert (echo.body, echo.end_of_stream) == (data, last)
        await call.write(pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
        assert (await call.read()).WhichOneof("response") == "response_trailers"
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
    assert registry.load("127.0.0.1:9002").requests == 0
    assert registry.load("127.0.0.1:9002").processed == 1
    assert OUTPUT_TOKENS.labels("m1")._value.get() - before == 4
    assert h.breaker.outcomes == [
        ("127.0.0.1:9001", None, True),
        ("127.0.0.1:9002", 200, False),
    ]


async def test_early_close_after_decision_releases_the_charge():
    registry = make_registry([9001])
    aborts = ABORTS.labels("m1")._value.get()
    async with Harness(registry) as h:
        call = h.open()
        await call.write(first(headers_message(chat_headers())))
        await call.write(body_message(chat_body(), end_of_stream=True))
        await call.read()
        await call.read()
        await call.write(
            response_headers_message(200, content_type="text/event-stream")
        )
        await call.read()
        await call.write(response_body_message(b"data: {}\n\n"))
        await call.read()
        assert registry.load("127.0.0.1:9001").requests == 1
        call.cancel()
        await _poll(lambda: registry.load("127.0.0.1:9001").requests == 0)
    assert ABORTS.labels("m1")._value.get() - aborts == 1


async def test_early_close_while_collecting_charges_nothing():
    registry = make_registry([9001])
    async with Harness(registry) as h:
        answers = await run(
            h,
            [
                first(headers_message(chat_headers())),
                body_message(b'{"model": "m1"', end_of_stream=False),
            ],
        )
    assert answers == []
    assert registry.load("127.0.0.1:9001").requests == 0
    assert h.policy.requests == []
