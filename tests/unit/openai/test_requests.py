"""Request parsing for routing: every endpoint shape, good and bad."""

from __future__ import annotations

import json
from typing import Any

import pytest

from corral.errors import InvalidRequest
from corral.openai.requests import (
    IMAGE_PLACEHOLDER,
    Endpoint,
    endpoint_for,
    parse_request,
)


def _parse(endpoint: Endpoint, body: Any):
    return parse_request(endpoint, json.dumps(body).encode())


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/v1/chat/completions", Endpoint.CHAT),
        ("/v1/chat/completions?x=1", Endpoint.CHAT),
        ("/v1/completions", Endpoint.COMPLETIONS),
        ("/v1/embeddings", Endpoint.EMBEDDINGS),
        ("/v1/responses", Endpoint.RESPONSES),
        ("/v1/messages", Endpoint.MESSAGES),
        ("/generate", Endpoint.GENERATE),
        ("/rerank", Endpoint.RERANK),
        ("/v1/rerank", Endpoint.RERANK),
        ("/v1/audio/transcriptions", Endpoint.OTHER),
    ],
)
def test_endpoint_for_path(path: str, endpoint: Endpoint):
    assert endpoint_for(path) is endpoint


def test_chat_flattens_parts_with_image_placeholder_and_keeps_tool_calls():
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    parsed = _parse(
        Endpoint.CHAT,
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [
                {"role": "developer", "content": "rules"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look: "},
                        {"type": "image_url", "image_url": {"url": "data:..."}},
                    ],
                },
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
        },
    )
    assert parsed.model == "m" and parsed.stream and parsed.include_usage
    assert [m["content"] for m in parsed.messages] == [
        "rules",
        f"look: \n{IMAGE_PLACEHOLDER}",
        "",
        "42",
    ]
    assert parsed.messages[2]["tool_calls"] == calls
    assert parsed.messages[3]["tool_call_id"] == "c1"
    assert parsed.tools == [{"type": "function", "function": {"name": "f"}}]
    assert parsed.add_special_tokens is False
    assert (
        "look: \n<image>" in parsed.routing_text and '"name":"f"' in parsed.routing_text
    )


@pytest.mark.parametrize(
    ("prompt", "text", "ids"),
    [
        ("hello", "hello", None),
        (["first", "second"], "first", None),
        ([1, 2, 3], None, [1, 2, 3]),
        ([[4, 5], [6]], None, [4, 5]),
    ],
    ids=["string", "strings", "ids", "id_lists"],
)
@pytest.mark.parametrize("endpoint", [Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS])
def test_prompt_shapes(endpoint: Endpoint, prompt: Any, text: Any, ids: Any):
    field = "prompt" if endpoint is Endpoint.COMPLETIONS else "input"
    parsed = _parse(endpoint, {"model": "m", field: prompt})
    assert (parsed.text, parsed.token_ids) == (text, ids)
    assert parsed.add_special_tokens is True


def test_responses_input_items_and_instructions_become_messages():
    parsed = _parse(
        Endpoint.RESPONSES,
        {
            "model": "m",
            "instructions": "be nice",
            "input": [
                {"role": "user", "content": "hi"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "a"},
                        {"type": "input_image", "image_url": "x"},
                    ],
                },
                {"type": "function_call", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "1", "output": "ok"},
            ],
        },
    )
    assert [(m["role"], m["content"]) for m in parsed.messages] == [
        ("system", "be nice"),
        ("user", "hi"),
        ("user", "a\n<image>"),
        ("assistant", "f({})"),
        ("tool", "ok"),
    ]
    assert _parse(Endpoint.RESPONSES, {"model": "m", "input": "q"}).messages == [
        {"role": "user", "content": "q"}
    ]


def test_anthropic_messages_system_blocks_and_content_blocks():
    parsed = _parse(
        Endpoint.MESSAGES,
        {
            "model": "m",
            "max_tokens": 5,
            "system": [{"type": "text", "text": "sys"}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "q"},
                        {"type": "image", "source": {}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t", "content": "r"}
                    ],
                },
            ],
        },
    )
    assert [m["content"] for m in parsed.messages] == [
        "sys",
        "q\n<image>",
        'f{"a":1}',
        "r",
    ]


@pytest.mark.parametrize(
    ("body", "text", "ids", "model"),
    [
        ({"text": "hi"}, "hi", None, None),
        ({"text": ["a", "b"], "model": "m"}, "a", None, "m"),
        ({"input_ids": [1, 2]}, None, [1, 2], None),
    ],
)
def test_sglang_generate(body: Any, text: Any, ids: Any, model: Any):
    parsed = _parse(Endpoint.GENERATE, body)
    assert (parsed.text, parsed.token_ids, parsed.model) == (text, ids, model)


def test_rerank_query_and_documents():
    parsed = _parse(Endpoint.RERANK, {"query": "q", "documents": ["a", {"text": "b"}]})
    assert parsed.text == "q\na\nb"
    assert parsed.model is None


def test_other_path_takes_model_from_json_and_tolerates_anything_else():
    assert parse_request(Endpoint.OTHER, b'{"model": "m", "x": 1}').model == "m"
    assert parse_request(Endpoint.OTHER, b"not json").model is None
    assert parse_request(Endpoint.OTHER, b"").model is None


@pytest.mark.parametrize(
    ("endpoint", "body", "needle"),
    [
        (Endpoint.CHAT, b"[1, 2]", "must be a JSON object, got array"),
        (Endpoint.CHAT, b"", "body is empty"),
        (
            Endpoint.CHAT,
            b'{"model": "m",\n "messages": [',
            "line 2, column 15, char 29",
        ),
        (Endpoint.CHAT, b'{"model": "\xff"}', "not valid UTF-8"),
        (Endpoint.CHAT, b'{"model": 3, "messages": []}', "'model' must be a string"),
        (
            Endpoint.CHAT,
            b'{"model": "m", "messages": "hi"}',
            "'messages' must be a list",
        ),
        (Endpoint.CHAT, b'{"model": "m", "messages": []}', "must not be empty"),
        (
            Endpoint.CHAT,
            b'{"model": "m", "messages": [1]}',
            "messages[0] must be an object",
        ),
        (
            Endpoint.CHAT,
            b'{"model":"m","messages":[{"role":"user","content":5}]}',
            "messages[0].content must be a string or a list",
        ),
        (
            Endpoint.CHAT,
            b'{"model":"m","messages":[{"content":"x"}]}',
            "messages[0].role must be a string",
        ),
        (
            Endpoint.CHAT,
            b'{"model":"m","stream":"yes","messages":[{"role":"u"}]}',
            "'stream' must be a boolean",
        ),
        (
            Endpoint.CHAT,
            b'{"model":"m","tools":{},"messages":[{"role":"u"}]}',
            "'tools' must be a list",
        ),
        (Endpoint.COMPLETIONS, b'{"model": "m", "prompt": 5}', "'prompt' must be"),
        (Endpoint.COMPLETIONS, b'{"model": "m", "prompt": []}', "'prompt' must be"),
        (
            Endpoint.COMPLETIONS,
            b'{"model": "m", "prompt": [1, "a"]}',
            "'prompt' must be",
        ),
        (Endpoint.EMBEDDINGS, b'{"model": "m", "input": {"a": 1}}', "'input' must be"),
        (Endpoint.RESPONSES, b'{"model": "m", "input": 3}', "'input' must be"),
        (Endpoint.MESSAGES, b'{"model": "m", "messages": {}}', "'messages' must be"),
        (Endpoint.GENERATE, b'{"sampling_params": {}}', "'text' or 'input_ids'"),
        (Endpoint.RERANK, b'{"query": 1, "documents": []}', "'query' must be a string"),
        (Endpoint.RERANK, b'{"query": "q", "documents": [1]}', "documents[0]"),
    ],
)
def test_bad_bodies_are_400_saying_what_is_wrong(endpoint, body, needle):
    with pytest.raises(InvalidRequest) as caught:
        parse_request(endpoint, body)
    assert caught.value.status == 400
    assert needle in caught.value.message
