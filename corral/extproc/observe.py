"""Watching a response go by: usage, time to first token, inter-token latency.

Nothing here holds the stream: each chunk is read and let go. SSE bodies are
parsed incrementally; a non-streamed JSON body is kept up to a bound and read
for ``usage`` at the end.
"""

from __future__ import annotations

from corral.openai.sse import SSEParser, Usage, body_usage, event_usage

MAX_JSON_BYTES = 1024 * 1024
"""Non-streamed responses longer than this are not read for usage."""


class ResponseObserver:
    """Per-response timings and token usage. Times are ``time.monotonic()``."""

    __slots__ = ("_body", "_last", "_sse", "first_token_s", "gaps", "started", "usage")

    def __init__(self, started: float, content_type: str) -> None:
        self.started = started
        self.usage = Usage()
        self._sse = (
            SSEParser() if content_type.startswith("text/event-stream") else None
        )
        self._body: bytearray | None = None if self._sse else bytearray()
        self._last: float | None = None
        self.first_token_s: float | None = None
        self.gaps: list[float] = []

    @property
    def streaming(self) -> bool:
        return self._sse is not None

    def chunk(self, data: bytes, now: float) -> None:
        """One body chunk as Envoy relayed it."""
        if self._sse is None:
            if self._body is not None:
                if len(self._body) + len(data) > MAX_JSON_BYTES:
                    self._body = None
                else:
                    self._body += data
            return
        content = False
        for event in self._sse.feed(data):
            if event.done:
                continue
            event_usage(event, self.usage)
            content = True
        if content:
            self._mark(now)

    def _mark(self, now: float) -> None:
        # A chunk that completes at least one event counts as "tokens arrived":
        # the first gives TTFT, later ones the gaps between chunks (ITL).
        if self._last is None:
            self.first_token_s = now - self.started
        else:
            self.gaps.append(now - self._last)
        self._last = now

    def end(self) -> Usage:
        """At end of stream: settle what is left and return the usage."""
        if self._sse is not None:
            for event in self._sse.flush():
                event_usage(event, self.usage)
        elif self._body:
            body_usage(bytes(self._body), self.usage)
            self._body = None
        return self.usage
