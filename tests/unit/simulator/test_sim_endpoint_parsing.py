"""Request parsing and scoring of the simulator's Responses, Messages and rerank
endpoints, without a server."""

from __future__ import annotations

import json

import pytest

from corral.errors import InvalidRequest
from corral.simulator import anthropic, rerank, responses_api
from corral.simulator.streams import named_sse


def test_rerank_score_is_share_of_query_words_case_folded() -> None:
    assert rerank.score("Red apples", "red APPLES and pears") == 1.0
    assert rerank.score("red apples", "green apples") == 0.5
    assert rerank.score("red red apples", "red") == 0.5
    assert rerank.score("...", "anything") == 0.0


def test_responses_input_string_and_instructions_become_chat() -> None:
    assert responses_api.input_messages({"input": "hi", "instructions": "sys"}) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
    ]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"input": []},
        {"input": "x", "instructions": 3},
        {"input": [{"role": "robot", "content": "x"}]},
        {"input": [{"type": "function_call", "name": "f"}]},
        {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
        {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
    ],
    ids=["none", "empty", "instructions", "role", "item-type", "image", "no-text"],
)
def test_responses_input_refuses_what_is_not_text_messages(body) -> None:
    with pytest.raises(InvalidRequest):
        responses_api.input_messages(body)


def test_anthropic_parse_maps_system_blocks_and_stop_sequences() -> None:
    messages, params = anthropic.parse(
        {
            "model": "m",
            "max_tokens": 7,
            "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "messages": [{"role": "user", "content": "q"}],
            "stop_sequences": ["END", ""],
        }
    )
    assert messages == [
        {"role": "system", "content": "a\nb"},
        {"role": "user", "content": "q"},
    ]
    assert params.max_tokens == 7 and params.stop == ("END",)


@pytest.mark.parametrize(
    "change",
    [
        {"model": None},
        {"max_tokens": None},
        {"max_tokens": 0},
        {"max_tokens": True},
        {"messages": "hi"},
        {"system": 5},
        {"stop_sequences": "END"},
        {"temperature": "hot"},
    ],
)
def test_anthropic_parse_refuses_bad_fields(change) -> None:
    body = {
        "model": "m",
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "x"}],
    }
    body.update(change)
    with pytest.raises(InvalidRequest):
        anthropic.parse(body)


def test_anthropic_error_body_types_by_status() -> None:
    assert anthropic.error_body(400, "bad") == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
    }
    assert anthropic.error_body(404, "x")["error"]["type"] == "not_found_error"
    assert anthropic.error_body(503, "x")["error"]["type"] == "overloaded_error"
    assert anthropic.error_body(502, "x")["error"]["type"] == "api_error"


def test_named_sse_writes_event_line_then_data() -> None:
    raw = named_sse({"type": "message_stop"}).decode()
    event, data, blank = raw.split("\n", 2)
    assert event == "event: message_stop"
    assert json.loads(data.removeprefix("data: ")) == {"type": "message_stop"}
    assert blank == "\n"
