"""Incremental reading of worker responses: SSE events and token usage.

Envoy hands the response body over in whatever chunks the worker wrote, so an
event, a line, or a multi-byte UTF-8 character may be split anywhere. The
parser keeps bytes until an event is complete (a blank line: ``\\n\\n`` or
``\\r\\n\\r\\n``, https://html.spec.whatwg.org/multipage/server-sent-events.html
#event-stream-interpretation) and decodes only complete events, so a split
character is never decoded in halves.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_USAGE_KEYS = (b'"usage"', b'"meta_info"')


@dataclass(slots=True)
class Usage:
    """Token counts a worker reported (OpenAI, Anthropic or SGLang names)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def merge(self, data: Any) -> None:
        """Fold in a response object or stream event that may carry usage.

        OpenAI: ``usage.prompt_tokens`` / ``completion_tokens``; Anthropic:
        ``usage.input_tokens`` / ``output_tokens`` (the output count grows in
        ``message_delta`` events, so the last value wins), also nested under
        ``message`` in ``message_start``; SGLang: ``meta_info``.
        """
        if not isinstance(data, dict):
            return
        for holder in (
            data.get("usage"),
            data.get("meta_info"),
            _get(data.get("message"), "usage"),
            _get(data.get("response"), "usage"),
        ):
            if not isinstance(holder, dict):
                continue
            prompt = holder.get("prompt_tokens", holder.get("input_tokens"))
            completion = holder.get("completion_tokens", holder.get("output_tokens"))
            if isinstance(prompt, int) and not isinstance(prompt, bool):
                self.prompt_tokens = prompt
            if isinstance(completion, int) and not isinstance(completion, bool):
                self.completion_tokens = completion


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str

    @property
    def done(self) -> bool:
        """The OpenAI end marker ``data: [DONE]``."""
        return self.data == "[DONE]"


class SSEParser:
    """Feed raw body chunks, get back the events they complete."""

    __slots__ = ("_buffer", "max_event_bytes")

    def __init__(self, max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add a chunk; return the events completed by it, in order.

        An event that grows beyond ``max_event_bytes`` without ending is
        dropped (it would only be read for usage, and memory stays bounded).
        """
        self._buffer += chunk
        events: list[SSEEvent] = []
        start = 0
        while True:
            match = _EVENT_END.search(self._buffer, start)
            if match is None:
                break
            raw = bytes(self._buffer[start : match.start()])
            start = match.end()
            event = _parse_event(raw)
            if event is not None:
                events.append(event)
        if start:
            del self._buffer[:start]
        if len(self._buffer) > self.max_event_bytes:
            self._buffer.clear()
        return events

    def flush(self) -> list[SSEEvent]:
        """At end of stream: the last event, if the worker did not end it."""
        raw = bytes(self._buffer)
        self._buffer.clear()
        event = _parse_event(raw) if raw.strip() else None
        return [event] if event is not None else []


def _parse_event(raw: bytes) -> SSEEvent | None:
    text = raw.decode("utf-8", errors="replace")
    name = "message"
    data: list[str] = []
    for line in text.splitlines():
        if not line or line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if key == "data":
            data.append(value)
        elif key == "event":
            name = value
    if not data:
        return None
    return SSEEvent(event=name, data="\n".join(data))


def event_usage(event: SSEEvent, usage: Usage) -> None:
    """Fold an event's usage into ``usage``; cheap for events without one."""
    if event.done:
        return
    raw = event.data
    if '"usage"' not in raw and '"meta_info"' not in raw:
        return
    try:
        usage.merge(json.loads(raw))
    except ValueError:
        return


def body_usage(body: bytes, usage: Usage) -> None:
    """Fold the usage of a whole (non-streamed) JSON response into ``usage``."""
    if not any(key in body for key in _USAGE_KEYS):
        return
    try:
        usage.merge(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return
