"""The ext_proc stream driven over real gRPC on 127.0.0.1, as Envoy drives it."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from corral.extproc.prompt import DEFAULT_ROUTING_CHARS
from corral.observability.metrics import ABORTS, OUTPUT_TOKENS, REGISTRY
from corral.pool import WorkerState
from corral.tokenizer import load_tokenizer
from tests.integration.extproc_harness import (
    Harness,
    RecordingBreaker,
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


def _metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _error(answer) -> tuple[int, dict, dict]:
    immediate = answer.immediate_response
    headers = {
        o.header.key: o.header.raw_value.decode() for o in immediate.headers.set_headers
    }
    return immediate.status.code, headers, json.loads(immediate.body)


async def _poll(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


async def test_body_decision_sets_destination_pool_metadata_and_clears_route_cache():
    registry = make_registry([9001, 9002])
    async with Harness(registry) as h:
        first, decision = await h.exchange(
            [headers_message(chat_headers()), body_message(chat_body())]
        )
    assert first.WhichOneof("response") == "request_headers"
    assert not first.request_headers.response.HasField("header_mutation")
    common = decision.request_body.response
    assert set_headers(common) == {
        "x-gateway-destination-endpoint": "127.0.0.1:9001,127.0.0.1:9002",
        "x-corral-pool": "m1",
        "x-corral-cluster": "corral_pool_m1",
    }
    assert common.clear_route_cache is True
    lb = decision.dynamic_metadata.fields["envoy.lb"].struct_value
    assert lb.fields["x-gateway-destination-endpoint"].string_value == (
        "127.0.0.1:9001,127.0.0.1:9002"
    )
    assert h.policy.requests[0].model == "m1"
    assert h.policy.requests[0].headers["x-request-id"] == "req-1"


async def test_alias_routes_to_its_pool():
    async with Harness(make_registry([9001])) as h:
        _, decision = await h.exchange(
            [headers_message(chat_headers()), body_message(chat_body("alias-1"))]
        )
    assert set_headers(decision.request_body.response)["x-corral-pool"] == "m1"


async def test_request_without_body_is_routed_on_headers_to_the_only_pool():
    async with Harness(make_registry([9001])) as h:
        (answer,) = await h.exchange(
            [
                headers_message(
                    {":method": "GET", ":path": "/v1/score"}, end_of_stream=True
                )
            ]
        )
    common = answer.request_headers.response
    assert set_headers(common)["x-gateway-destination-endpoint"] == "127.0.0.1:9001"
    assert common.clear_route_cache is True


async def test_streamed_response_moves_charge_to_served_worker_and_releases_at_end():
    registry = make_registry([9001, 9002])
    before = _metric("corral_output_tokens_total", {"model": "m1"})
    async with Harness(registry) as h:
        call = h.open()
        await call.write(headers_message(chat_headers()))
        await call.read()
        await call.write(body_message(chat_body(stream=True)))
        decision = await call.read()
        # Streamed requests take the routes with a first-byte limit.
        assert set_headers(decision.request_body.response)["x-corral-stream"] == "1"
        assert registry.load("127.0.0.1:9001").requests == 1
        await call.write(
            response_headers_message(
                200, upstream="127.0.0.1:9002", content_type="text/event-stream"
            )
        )
        headers_answer = await call.read()
        assert set_headers(headers_answer.response_headers.response) == {
            "x-corral-worker": "127.0.0.1:9002",
            "x-request-id": "req-1",
        }
        assert registry.load("127.0.0.1:9001").requests == 0
        assert registry.load("127.0.0.1:9002").requests == 1
        event = b'data: {"choices":[{"delta":{"content":"h\xc3\xa9"}}]}\n\n'
        # The event and a multi-byte character split across two chunks.
        for piece in (event[:40], event[40:]):
            await call.write(response_body_message(piece))
            answer = await call.read()
            assert answer.WhichOneof("response") == "response_body"
            assert not answer.response_body.HasField("response")
        await call.write(
            response_body_message(
                b'data: {"choices":[],"usage":{"prompt_tokens":5,'
                b'"completion_tokens":7}}\n\ndata: [DONE]\n\n',
                end_of_stream=True,
            )
        )
        await call.read()
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
    assert registry.load("127.0.0.1:9002").requests == 0
    assert registry.load("127.0.0.1:9002").processed == 1
    assert _metric("corral_output_tokens_total", {"model": "m1"}) - before == 7
    assert h.breaker.outcomes == [
        ("127.0.0.1:9001", None, True),
        ("127.0.0.1:9002", 200, False),
    ]


async def test_non_streamed_json_usage_is_read_at_end_of_stream():
    before = OUTPUT_TOKENS.labels("m1")._value.get()
    async with Harness(make_registry([9001])) as h:
        body = json.dumps(
            {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 11}}
        ).encode()
        await h.exchange(
            [
                headers_message(chat_headers()),
                body_message(chat_body()),
                response_headers_message(200, upstream="127.0.0.1:9001"),
                response_body_message(body[:10]),
                response_body_message(body[10:], end_of_stream=True),
            ]
        )
    assert OUTPUT_TOKENS.labels("m1")._value.get() - before == 11


async def test_stream_ending_without_end_of_stream_is_an_abort_and_releases():
    registry = make_registry([9001])
    aborts = ABORTS.labels("m1")._value.get()
    async with Harness(registry) as h:
        await h.exchange(
            [
                headers_message(chat_headers()),
                body_message(chat_body()),
                response_headers_message(
                    200, upstream="127.0.0.1:9001", content_type="text/event-stream"
                ),
                response_body_message(b"data: {}\n\n"),
            ]
        )
        await _poll(lambda: registry.load("127.0.0.1:9001").requests == 0)
    assert ABORTS.labels("m1")._value.get() - aborts == 1
    # The worker answered 200; a client that left is not the worker's fault.
    assert h.breaker.outcomes == []


async def test_cancelled_stream_after_decision_releases_and_reports_reset():
    registry = make_registry([9001])
    async with Harness(registry) as h:
        call = h.open()
        await call.write(headers_message(chat_headers()))
        await call.read()
        await call.write(body_message(chat_body()))
        await call.read()
        assert registry.load("127.0.0.1:9001").requests == 1
        call.cancel()
        await _poll(lambda: registry.load("127.0.0.1:9001").requests == 0)
        await _poll(lambda: h.breaker.outcomes == [("127.0.0.1:9001", None, True)])


async def test_response_headers_with_end_of_stream_finish_the_request():
    registry = make_registry([9001])
    async with Harness(registry) as h:
        await h.exchange(
            [
                headers_message(chat_headers()),
                body_message(chat_body()),
                response_headers_message(
                    503, upstream="127.0.0.1:9001", end_of_stream=True
                ),
            ]
        )
    assert registry.load("127.0.0.1:9001").processed == 1
    assert h.breaker.outcomes == [("127.0.0.1:9001", 503, False)]


async def test_oversized_content_length_gets_413_at_request_headers():
    config = {"models": [{"name": "m1"}], "limits": {"max_body_bytes": 4096}}
    async with Harness(make_registry([9001]), config) as h:
        (answer,) = await h.exchange([headers_message(chat_headers(length=4097))])
    status, headers, body = _error(answer)
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "req-1"
    assert body["error"]["code"] == "request_too_large"


async def test_oversized_buffered_body_gets_413():
    config = {"models": [{"name": "m1"}], "limits": {"max_body_bytes": 4096}}
    async with Harness(make_registry([9001]), config) as h:
        _, answer = await h.exchange(
            [headers_message(chat_headers()), body_message(b" " * 5000)]
        )
    assert _error(answer)[0] == 413


async def test_four_mib_prompt_is_routed_on_its_start_and_charged_in_full():
    prompt = "word " * (4 * 1024 * 1024 // 5)
    body = chat_body(messages=[{"role": "user", "content": prompt}])
    assert len(body) > 4 * 1024 * 1024
    async with Harness(make_registry([9001])) as h:
        _, answer = await h.exchange(
            [headers_message(chat_headers(length=len(body))), body_message(body)]
        )
    assert set_headers(answer.request_body.response)["x-corral-pool"] == "m1"
    routed = h.policy.requests[0]
    assert routed.text is not None
    # Routing matches prefixes: only the start is handed to the policy, while
    # load accounting still sees the whole prompt.
    assert len(routed.text) == DEFAULT_ROUTING_CHARS
    assert routed.token_count > 1_000_000


async def test_truncated_json_gets_400_with_position():
    async with Harness(make_registry([9001])) as h:
        _, answer = await h.exchange(
            [headers_message(chat_headers()), body_message(b'{"model": "m1", "mess')]
        )
    status, _, body = _error(answer)
    assert status == 400
    assert "(line 1, column 17, char 16)" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"


async def test_unknown_model_gets_404_model_not_found():
    async with Harness(make_registry([9001])) as h:
        _, answer = await h.exchange(
            [headers_message(chat_headers()), body_message(chat_body("nope"))]
        )
    status, _, body = _error(answer)
    assert (status, body["error"]["code"]) == (404, "model_not_found")


async def test_missing_model_gets_400_without_default_and_routes_with_one():
    registry = make_registry([9001])
    async with Harness(registry) as h:
        _, answer = await h.exchange(
            [headers_message(chat_headers()), body_message(b'{"messages": []}')]
        )
    assert _error(answer)[0] == 400
    config = {"models": [{"name": "m1"}], "default_model": "m1"}
    async with Harness(registry, config) as h:
        body = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
        _, answer = await h.exchange(
            [headers_message(chat_headers()), body_message(body)]
        )
    assert set_headers(answer.request_body.response)["x-corral-pool"] == "m1"


@pytest.mark.parametrize("case", ["no_ready_worker", "all_blocked_by_breaker"])
async def test_no_eligible_worker_gets_503_with_retry_after(case: str):
    registry = make_registry([9001])
    breaker = RecordingBreaker()
    if case == "no_ready_worker":
        registry.set_state("127.0.0.1:9001", WorkerState.NOT_READY)
    else:
        breaker.blocked.add("127.0.0.1:9001")
    async with Harness(registry, breaker=breaker) as h:
        _, answer = await h.exchange(
            [headers_message(chat_headers()), body_message(chat_body())]
        )
    status, headers, body = _error(answer)
    assert status == 503
    assert headers["retry-after"] == "1"
    assert body["error"]["code"] == "no_healthy_worker"


async def test_get_models_lists_pools_and_answers_one_model():
    async with Harness(make_registry([9001])) as h:
        (listing,) = await h.exchange(
            [
                headers_message(
                    {":method": "GET", ":path": "/v1/models"}, end_of_stream=True
                )
            ]
        )
        (one,) = await h.exchange(
            [
                headers_message(
                    {":method": "GET", ":path": "/v1/models/m1"}, end_of_stream=True
                )
            ]
        )
        (missing,) = await h.exchange(
            [
                headers_message(
                    {":method": "GET", ":path": "/v1/models/x"}, end_of_stream=True
                )
            ]
        )
    assert listing.immediate_response.status.code == 200
    data = json.loads(listing.immediate_response.body)
    assert data["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in data["data"]] == [
        ("m1", "model", "corral")
    ]
    assert json.loads(one.immediate_response.body)["id"] == "m1"
    assert _error(missing)[0] == 404


async def test_chat_tokens_reach_the_policy_as_the_template_renders_them(
    tinyllama_path,
):
    tokenizer = load_tokenizer(str(tinyllama_path))
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hi"},
                {"type": "text", "text": "there"},
            ],
        },
    ]
    async with Harness(make_registry([9001]), tokenizer_for=lambda _m: tokenizer) as h:
        await h.exchange(
            [
                headers_message(chat_headers()),
                body_message(chat_body(messages=messages)),
            ]
        )
    flat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi\nthere"},
    ]
    expected = tokenizer.encode(tokenizer.render_chat(flat), add_special_tokens=False)
    assert list(h.policy.requests[0].tokens) == expected
    assert h.policy.requests[0].token_count == len(expected)


async def test_default_policy_is_built_from_model_config():
    from corral.config.settings import parse_settings
    from corral.extproc import ExtProcServer

    settings = parse_settings(
        {"models": [{"name": "m1", "policy": {"name": "round_robin"}}]}
    )
    server = ExtProcServer(make_registry([9001]), settings)
    try:
        assert server.context.policy("m1").name == "round_robin"
        assert server.context.policy("m1") is server.context.policy("m1")
    finally:
        await server.close()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model": "m1", "max_tokens": ' + b"9" * 5000 + b"}", id="huge-int"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
    ],
)
async def test_json_python_cannot_hold_is_400_not_a_crash(body):
    async with Harness(make_registry([9001])) as h:
        _, answer = await h.exchange(
            [headers_message(chat_headers(length=len(body))), body_message(body)]
        )
    status, _, error = _error(answer)
    assert status == 400
    assert error["error"]["type"] == "invalid_request_error"


async def test_lone_surrogate_is_a_400_not_a_crash():
    tokenizer = load_tokenizer("builtin")
    body = b'{"model": "m1", "messages": [{"role": "user", "content": "\\ud800 hi"}]}'
    async with Harness(make_registry([9001]), tokenizer_for=lambda _: tokenizer) as h:
        _, answer = await h.exchange(
            [headers_message(chat_headers(length=len(body))), body_message(body)]
        )
    status, _, error = _error(answer)
    assert status == 400
    assert "lone surrogate" in error["error"]["message"]


async def test_anthropic_messages_errors_come_in_anthropic_shape():
    body = b'{"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}'
    headers = chat_headers(length=len(body))
    headers[":path"] = "/v1/messages"
    async with Harness(make_registry([9001])) as h:
        _, answer = await h.exchange([headers_message(headers), body_message(body)])
    status, _, error = _error(answer)
    assert status == 404
    assert error == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `nope` does not exist."},
    }


async def test_a_worker_that_leaves_takes_its_in_flight_series_with_it():
    registry = make_registry([9001])
    in_flight = "corral_worker_in_flight_requests"
    async with Harness(registry) as h:
        await h.exchange([headers_message(chat_headers()), body_message(chat_body())])
        assert REGISTRY.get_sample_value(in_flight, {"worker": "127.0.0.1:9001"}) is not None
        registry.remove("127.0.0.1:9001")
        # Label sets stay bounded however often workers come and go.
        assert REGISTRY.get_sample_value(in_flight, {"worker": "127.0.0.1:9001"}) is None


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/metrics"), ("POST", "/sim/faults"), ("POST", "/v1/load_lora_adapter"),
     ("GET", "/health")],
)
async def test_engine_routes_outside_the_inference_api_are_not_forwarded(method, path):
    async with Harness(make_registry([9001])) as h:
        (answer,) = await h.exchange(
            [headers_message({":method": method, ":path": path}, end_of_stream=True)]
        )
    status, _, error = _error(answer)
    assert status == 404
    assert path in error["error"]["message"]
