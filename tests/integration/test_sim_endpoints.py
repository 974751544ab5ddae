"""The simulator's other routed endpoints: Responses, Anthropic Messages, rerank,
tokenize and detokenize, as their clients see them."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from corral.simulator import WORKER_HEADER, SimWorker
from tests.integration._sim_support import client, running, scrape

# Answers that end on their own well before the bounds the tests give.
SHORT = {"min_output_tokens": 3, "max_output_tokens": 6}


async def _post(
    worker: SimWorker, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{worker.url}{path}", json=body) as resp,
    ):
        return resp.status, dict(resp.headers), json.loads(await resp.read())


async def _events(
    worker: SimWorker, path: str, body: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """A named SSE stream as (event name, data) pairs; checks each data's type
    repeats its event name."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{worker.url}{path}", json=body) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = (await resp.read()).decode()
    out = []
    for block in text.split("\n\n"):
        if not block:
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(lines) == {"event", "data"}, block
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append((lines["event"], data))
    return out


def _chat_tokens(worker: SimWorker, messages: list[dict[str, Any]]) -> int:
    assert worker.tokenizer is not None
    text = worker.tokenizer.render_chat(messages)
    return len(worker.tokenizer.encode(text, add_special_tokens=False))


# -- /v1/responses ----------------------------------------------------------------


async def test_responses_answer_has_response_shape_and_chat_usage():
    async with running(model="m1", **SHORT) as worker:
        raw = await client(worker).responses.with_raw_response.create(
            model="m1",
            input="hello there",
            instructions="be brief",
            max_output_tokens=50,
        )
        reply = raw.parse()
        assert raw.headers[WORKER_HEADER] == worker.id
        expected = _chat_tokens(
            worker,
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello there"},
            ],
        )
    assert reply.id.startswith("resp_")
    assert reply.object == "response"
    assert reply.status == "completed"
    assert reply.model == "m1"
    [item] = reply.output
    assert item.type == "message" and item.role == "assistant"
    [part] = item.content
    assert part.type == "output_text" and part.text == reply.output_text
    assert reply.output_text
    assert reply.usage.input_tokens == expected
    assert 3 <= reply.usage.output_tokens <= 6
    assert reply.usage.total_tokens == expected + reply.usage.output_tokens


async def test_responses_cut_by_max_output_tokens_is_incomplete():
    async with running() as worker:
        reply = await client(worker).responses.create(
            model="sim-model", input="hi", max_output_tokens=3
        )
    assert reply.status == "incomplete"
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.output_tokens == 3


async def test_responses_message_items_render_like_chat_messages():
    async with running() as worker:
        reply = await client(worker).responses.create(
            model="sim-model",
            max_output_tokens=1,
            input=[
                {"role": "developer", "content": "rules"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "alpha"},
                        {"type": "input_text", "text": "beta"},
                    ],
                },
                {"role": "assistant", "content": "gamma"},
                {"role": "user", "content": "delta"},
            ],
        )
        expected = _chat_tokens(
            worker,
            [
                {"role": "system", "content": "rules"},
                {"role": "user", "content": "alpha\nbeta"},
                {"role": "assistant", "content": "gamma"},
                {"role": "user", "content": "delta"},
            ],
        )
    assert reply.usage.input_tokens == expected


async def test_streamed_responses_events_as_the_official_client_reads_them():
    async with running(**SHORT) as worker:
        stream = await client(worker).responses.create(
            model="sim-model", input="stream me", max_output_tokens=50, stream=True
        )
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == len(kinds) - 8
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-4]
    final = events[-1].response
    assert "".join(deltas) == done.text == final.output_text
    assert final.status == "completed"
    assert final.usage.output_tokens == len(deltas)
    assert events[0].response.status == "in_progress"


async def test_responses_bad_input_is_400_and_unknown_model_404():
    async with running() as worker:
        api = client(worker)
        with pytest.raises(openai.BadRequestError) as bad:
            await api.responses.create(model="sim-model", input=[{"type": "x"}])
        assert bad.value.body["type"] == "BadRequestError"
        with pytest.raises(openai.BadRequestError):
            await api.responses.create(model="sim-model", input=42)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            await api.responses.create(model="other", input="hi")


# -- /v1/messages -----------------------------------------------------------------


async def test_messages_answer_has_anthropic_shape():
    async with running(**SHORT) as worker:
        body = {
            "model": "sim-model",
            "max_tokens": 50,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hello"}]}
            ],
        }
        status, headers, reply = await _post(worker, "/v1/messages", body)
        expected = _chat_tokens(
            worker,
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello"},
            ],
        )
    assert status == 200 and headers[WORKER_HEADER] == worker.id
    assert reply["id"].startswith("msg_")
    assert (reply["type"], reply["role"], reply["model"]) == (
        "message",
        "assistant",
        "sim-model",
    )
    [block] = reply["content"]
    assert block["type"] == "text" and block["text"]
    assert reply["stop_reason"] == "end_turn" and reply["stop_sequence"] is None
    assert reply["usage"]["input_tokens"] == expected
    assert 3 <= reply["usage"]["output_tokens"] <= 6


async def test_messages_stop_reasons_max_tokens_and_stop_sequence():
    async with running() as worker:
        base = {
            "model": "sim-model",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "p"}],
        }
        _, _, full = await _post(worker, "/v1/messages", base)
        text = full["content"][0]["text"]
        assert full["stop_reason"] == "max_tokens"
        assert full["usage"]["output_tokens"] == 20
        stop = " " + text.split()[3]
        _, _, cut = await _post(
            worker, "/v1/messages", {**base, "stop_sequences": [stop]}
        )
    assert cut["stop_reason"] == "stop_sequence"
    assert cut["stop_sequence"] == stop
    assert cut["content"][0]["text"] == text[: text.index(stop)]


async def test_streamed_messages_follow_anthropic_event_order():
    async with running(**SHORT) as worker:
        events = await _events(
            worker,
            "/v1/messages",
            {
                "model": "sim-model",
                "max_tokens": 50,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        expected = _chat_tokens(worker, [{"role": "user", "content": "hi"}])
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert len(deltas) == len(names) - 5
    assert all(d["type"] == "text_delta" for d in deltas)
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == expected and start["content"] == []
    end = events[-2][1]
    assert end["delta"]["stop_reason"] == "end_turn"
    assert end["usage"]["output_tokens"] == len(deltas)
    assert "".join(d["text"] for d in deltas)


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (
            {"model": "sim-model", "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_request_error",
        ),
        (
            {"model": "sim-model", "max_tokens": 5, "messages": []},
            400,
            "invalid_request_error",
        ),
        (
            {
                "model": "sim-model",
                "max_tokens": 5,
                "messages": [{"role": "system", "content": "x"}],
            },
            400,
            "invalid_request_error",
        ),
        (
            {
                "model": "sim-model",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "image"}]}],
            },
            400,
            "invalid_request_error",
        ),
        (
            {
                "model": "other",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
            },
            404,
            "not_found_error",
        ),
    ],
    ids=["no-max-tokens", "no-messages", "bad-role", "image-block", "unknown-model"],
)
async def test_messages_errors_use_anthropic_envelope(body, status, kind):
    async with running() as worker:
        got, headers, reply = await _post(worker, "/v1/messages", body)
    assert got == status
    assert headers[WORKER_HEADER] == worker.id
    assert reply["type"] == "error"
    assert reply["error"]["type"] == kind and reply["error"]["message"]


# -- rerank -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank"])
async def test_rerank_sorts_by_overlap_and_keeps_top_n(path):
    documents = [
        "nothing relevant here",
        "the capital of France is Paris",
        {"text": "Paris is a city"},
    ]
    async with running() as worker:
        status, headers, reply = await _post(
            worker,
            path,
            {
                "model": "sim-model",
                "query": "capital of Paris",
                "documents": documents,
                "top_n": 2,
            },
        )
        assert worker.tokenizer is not None
        query = worker.tokenizer.encode("capital of Paris")
        texts = [d if isinstance(d, str) else d["text"] for d in documents]
        total = sum(
            len(query) + len(worker.tokenizer.encode(t, add_special_tokens=False))
            for t in texts
        )
        metrics = await scrape(worker)
    assert status == 200 and headers[WORKER_HEADER] == worker.id
    assert reply["id"].startswith("rerank-") and reply["model"] == "sim-model"
    assert reply["usage"] == {"total_tokens": total}
    results = reply["results"]
    assert [r["index"] for r in results] == [1, 2]
    assert results[0]["relevance_score"] == 1.0
    assert results[1]["relevance_score"] == pytest.approx(1 / 3)
    assert results[1]["document"] == {"text": "Paris is a city"}
    # Every pair went through the engine's prefix cache, as a prompt does.
    assert metrics["vllm:prefix_cache_queries_total"] == total


async def test_rerank_without_top_n_returns_all_and_rejects_bad_documents():
    async with running() as worker:
        _, _, reply = await _post(
            worker, "/rerank", {"query": "a b", "documents": ["b", "x", "a b"]}
        )
        status, _, error = await _post(
            worker, "/rerank", {"query": "a", "documents": [1]}
        )
    assert [(r["index"], r["relevance_score"]) for r in reply["results"]] == [
        (2, 1.0),
        (0, 0.5),
        (1, 0.0),
    ]
    assert status == 400
    assert error["error"]["type"] == "BadRequestError"
    assert error["error"]["param"] == "documents[0]"


# -- tokenize / detokenize --------------------------------------------------------


async def test_tokenize_prompt_and_messages_and_detokenize_round_trip():
    async with running(max_model_len=4096) as worker:
        assert worker.tokenizer is not None
        status, headers, plain = await _post(
            worker, "/tokenize", {"model": "sim-model", "prompt": "hello world"}
        )
        messages = [{"role": "user", "content": "hello world"}]
        _, _, chat = await _post(worker, "/tokenize", {"messages": messages})
        _, _, back = await _post(worker, "/detokenize", {"tokens": plain["tokens"]})
        ids = worker.tokenizer.encode("hello world", add_special_tokens=True)
        decoded = worker.tokenizer.decode(ids)
    assert status == 200 and headers[WORKER_HEADER] == worker.id
    assert plain == {
        "count": len(ids),
        "max_model_len": 4096,
        "tokens": ids,
        "token_strs": None,
    }
    assert chat["count"] == _chat_tokens(worker, messages) == len(chat["tokens"])
    assert back == {"prompt": decoded}
    assert "hello world" in decoded


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/tokenize", {}, 400),
        ("/tokenize", {"prompt": "a", "messages": []}, 400),
        ("/tokenize", {"prompt": 5}, 400),
        ("/tokenize", {"model": "other", "prompt": "a"}, 404),
        ("/detokenize", {"tokens": "abc"}, 400),
        ("/detokenize", {"tokens": [10**9]}, 400),
        ("/detokenize", {"model": "other", "tokens": [1]}, 404),
    ],
)
async def test_tokenizer_endpoints_reject_bad_input(path, body, status):
    async with running() as worker:
        got, headers, reply = await _post(worker, path, body)
    assert got == status
    assert headers[WORKER_HEADER] == worker.id
    assert reply["error"]["code"] == status


async def test_new_endpoints_are_served_by_the_sglang_simulator_too():
    async with running(engine="sglang", **SHORT) as worker:
        reply = await client(worker).responses.create(
            model="sim-model", input="hi", max_output_tokens=50
        )
        status, _, tokens = await _post(worker, "/tokenize", {"prompt": "hi"})
        metrics = await scrape(worker)
    assert reply.status == "completed" and status == 200 and tokens["count"] > 0
    # Generation counted in SGLang's own metric names.
    assert metrics["sglang:generation_tokens_total"] == reply.usage.output_tokens
