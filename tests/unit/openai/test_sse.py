"""The SSE parser: events and characters split anywhere across chunks."""

from __future__ import annotations

import json

import pytest

from corral.openai.sse import SSEParser, Usage, body_usage, event_usage

STREAM = (
    'data: {"choices":[{"delta":{"content":"h\u00e9 \u4e16\u754c \U0001f600"}}]}\n\n'
    ": keep-alive comment\n\n"
    'event: message_delta\r\ndata: {"usage":{"output_tokens":4}}\r\n\r\n'
    'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}\n\n'
    "data: [DONE]\n\n"
).encode()


def _events(chunks: list[bytes]):
    parser = SSEParser()
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events + parser.flush()


EXPECTED = _events([STREAM])


def test_whole_stream_parses_into_events():
    assert [e.event for e in EXPECTED] == [
        "message",
        "message_delta",
        "message",
        "message",
    ]
    assert json.loads(EXPECTED[0].data)["choices"][0]["delta"]["content"] == (
        "h\u00e9 \u4e16\u754c \U0001f600"
    )
    assert EXPECTED[-1].done


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_at_every_byte_gives_the_same_events(cut: int):
    assert _events([STREAM[:cut], STREAM[cut:]]) == EXPECTED


def test_one_byte_chunks_give_the_same_events():
    assert _events([bytes([b]) for b in STREAM]) == EXPECTED


def test_usage_from_events_last_value_wins():
    usage = Usage()
    for event in EXPECTED:
        event_usage(event, usage)
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 9)


def test_unterminated_last_event_is_flushed():
    parser = SSEParser()
    assert parser.feed(b'data: {"a":1}') == []
    assert [e.data for e in parser.flush()] == ['{"a":1}']


def test_an_event_beyond_the_bound_is_dropped_and_parsing_goes_on():
    parser = SSEParser(max_event_bytes=16)
    assert parser.feed(b"data: " + b"x" * 32) == []
    assert [e.data for e in parser.feed(b"\n\ndata: y\n\n")] == ["y"]


@pytest.mark.parametrize(
    ("body", "prompt", "completion"),
    [
        (b'{"usage":{"prompt_tokens":1,"completion_tokens":2}}', 1, 2),
        (b'{"usage":{"input_tokens":5,"output_tokens":6}}', 5, 6),
        (b'{"text":"x","meta_info":{"prompt_tokens":7,"completion_tokens":8}}', 7, 8),
        (b'{"choices":[]}', None, None),
        (b'{"usage": broken', None, None),
    ],
    ids=["openai", "anthropic", "sglang", "none", "broken"],
)
def test_body_usage(body: bytes, prompt, completion):
    usage = Usage()
    body_usage(body, usage)
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
