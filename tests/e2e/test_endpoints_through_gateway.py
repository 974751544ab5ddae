"""Responses, Anthropic Messages, rerank and tokenize through the whole stack:
Envoy, the control plane's routing, and simulated workers answering them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.stack import Stack, start_stack

pytestmark = pytest.mark.e2e

MODEL = "corral-demo"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(Path(tmp_path_factory.mktemp("endpoints")), workers=2)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway, timeout=30) as client:
        yield client


def _served_by(stack: Stack, headers: httpx.Headers | dict[str, str]) -> str:
    worker = headers.get("x-corral-worker")
    assert worker in {f"127.0.0.1:{port}" for port in stack.sim_ports}, worker
    return str(worker)


def _named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        if block:
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_responses_through_the_gateway(stack: Stack) -> None:
    with openai.OpenAI(base_url=stack.base_url, api_key="x", max_retries=0) as api:
        raw = api.responses.with_raw_response.create(
            model=MODEL,
            input="say something",
            instructions="be brief",
            max_output_tokens=4,
        )
        _served_by(stack, raw.headers)
        reply = raw.parse()
        assert reply.object == "response" and reply.model == MODEL
        assert reply.output_text and reply.usage.output_tokens == 4
        assert reply.usage.input_tokens > 0
        with api.responses.with_streaming_response.create(
            model=MODEL, input="stream please", max_output_tokens=4, stream=True
        ) as streamed:
            _served_by(stack, streamed.headers)
            events = list(streamed.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds.count("response.output_text.delta") == 4
    assert kinds[-1] == "response.incomplete"  # cut by max_output_tokens
    assert events[-1].response.usage.output_tokens == 4


def test_anthropic_messages_through_the_gateway(
    stack: Stack, http: httpx.Client
) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 3,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    _served_by(stack, response.headers)
    reply = response.json()
    assert reply["type"] == "message" and reply["stop_reason"] == "max_tokens"
    assert reply["usage"]["output_tokens"] == 3
    with http.stream("POST", "/v1/messages", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        _served_by(stack, resp.headers)
        events = _named_events(resp.read().decode())
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names.count("content_block_delta") == 3
    bad = http.post("/v1/messages", json={**body, "max_tokens": None})
    assert bad.status_code == 400
    assert bad.json()["type"] == "error"
    assert bad.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank"])
def test_rerank_through_the_gateway(
    stack: Stack, http: httpx.Client, path: str
) -> None:
    response = http.post(
        path,
        json={
            "model": MODEL,
            "query": "red apples",
            "documents": ["blue sky", "red apples are sweet", "green apples"],
            "top_n": 2,
        },
    )
    assert response.status_code == 200, response.text
    _served_by(stack, response.headers)
    reply = response.json()
    assert [r["index"] for r in reply["results"]] == [1, 2]
    assert reply["results"][0]["document"] == {"text": "red apples are sweet"}
    assert reply["usage"]["total_tokens"] > 0


def test_tokenize_and_detokenize_through_the_gateway(
    stack: Stack, http: httpx.Client
) -> None:
    response = http.post("/tokenize", json={"model": MODEL, "prompt": "hello world"})
    assert response.status_code == 200, response.text
    _served_by(stack, response.headers)
    tokens = response.json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    chat = http.post(
        "/tokenize",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}]},
    )
    assert chat.status_code == 200 and chat.json()["count"] > 0
    back = http.post("/detokenize", json={"model": MODEL, "tokens": tokens["tokens"]})
    assert back.status_code == 200, back.text
    _served_by(stack, back.headers)
    assert "hello world" in back.json()["prompt"]
