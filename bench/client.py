"""The load generator: OpenAI chat completions over aiohttp, timed per request.

Streamed requests are timed on the client's clock: TTFT is the arrival of the
first SSE chunk carrying content, inter-token latency (ITL) is the gap between
consecutive content chunks, end-to-end latency is the arrival of ``[DONE]`` (or
of the whole body when not streamed). SSE framing follows the WHATWG
server-sent events format (https://html.spec.whatwg.org/multipage/
server-sent-events.html): events end at a blank line, data lines start with
``data:``.

Every run is bounded twice: each request by its own timeout, the whole
workload by its time limit, after which unfinished sessions are cancelled and
counted as not sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.workloads import Session, Workload

logger = logging.getLogger(__name__)


@dataclass
class RequestResult:
    ok: bool
    status: int
    start: float
    """Client monotonic clock, seconds."""
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""
    session: int = 0
    turn: int = 0


@dataclass
class RunResult:
    workload: str
    results: list[RequestResult]
    wall_s: float
    unsent: int
    timed_out: bool


def _content_of(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    return str(delta.get("content") or "")


async def _stream_chat(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    timeout_s: float,
    result: RequestResult,
) -> str:
    text: list[str] = []
    last_token_at: float | None = None
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with http.post(url, json=body, timeout=timeout) as response:
        result.status = response.status
        if response.status != 200:
            result.error = (await response.text())[:200]
            return ""
        buffer = b""
        async for piece in response.content.iter_any():
            buffer += piece
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        result.ok = True
                        continue
                    chunk = json.loads(data)
                    usage = chunk.get("usage")
                    if usage:
                        result.output_tokens = int(usage.get("completion_tokens", 0))
                        result.prompt_tokens = int(usage.get("prompt_tokens", 0))
                    content = _content_of(chunk)
                    if not content:
                        continue
                    now = time.monotonic()
                    if last_token_at is None:
                        result.ttft_s = now - result.start
                    else:
                        result.itl_s.append(now - last_token_at)
                    last_token_at = now
                    text.append(content)
        result.e2e_s = time.monotonic() - result.start
    if not result.output_tokens:
        result.output_tokens = len(text)
    if result.ttft_s is None:
        result.ok = False
        result.error = result.error or "stream ended without content"
    return "".join(text)


async def _plain_chat(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    timeout_s: float,
    result: RequestResult,
) -> str:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with http.post(url, json=body, timeout=timeout) as response:
        result.status = response.status
        raw = await response.read()
        result.e2e_s = time.monotonic() - result.start
        if response.status != 200:
            result.error = raw[:200].decode(errors="replace")
            return ""
    payload = json.loads(raw)
    result.ttft_s = result.e2e_s
    usage = payload.get("usage") or {}
    result.output_tokens = int(usage.get("completion_tokens", 0))
    result.prompt_tokens = int(usage.get("prompt_tokens", 0))
    result.ok = True
    choices = payload.get("choices") or [{}]
    return str((choices[0].get("message") or {}).get("content") or "")


async def _run_session(
    http: aiohttp.ClientSession,
    url: str,
    model: str,
    workload: Workload,
    index: int,
    session: Session,
    results: list[RequestResult],
) -> None:
    history: list[dict[str, str]] = []
    if session.system is not None:
        history.append({"role": "system", "content": session.system})
    for turn, user_text in enumerate(session.user_turns):
        messages = [*history, {"role": "user", "content": user_text}]
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": workload.max_tokens,
            "temperature": 0,
            "stream": workload.stream,
        }
        if workload.stream:
            body["stream_options"] = {"include_usage": True}
        result = RequestResult(
            ok=False, status=0, start=time.monotonic(), session=index, turn=turn
        )
        call = _stream_chat if workload.stream else _plain_chat
        try:
            answer = await call(http, url, body, workload.request_timeout_s, result)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            result.ok = False
            result.error = f"{type(exc).__name__}: {exc}"[:200]
            answer = ""
        results.append(result)
        if not result.ok:
            return
        if workload.keep_history:
            history = [*messages, {"role": "assistant", "content": answer}]


async def run_workload(base_url: str, model: str, workload: Workload) -> RunResult:
    """Send ``workload`` to ``base_url`` and time every request.

    At most ``workload.concurrency`` sessions are in flight; the run stops at
    ``workload.time_limit_s`` whatever is left.
    """
    url = base_url.rstrip("/") + "/v1/chat/completions"
    results: list[RequestResult] = []
    queue: asyncio.Queue[tuple[int, Session]] = asyncio.Queue()
    for item in enumerate(workload.sessions):
        queue.put_nowait(item)
    connector = aiohttp.TCPConnector(limit=workload.concurrency + 2, force_close=False)

    async def lane(http: aiohttp.ClientSession) -> None:
        while True:
            try:
                index, session = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await _run_session(http, url, model, workload, index, session, results)

    started = time.monotonic()
    timed_out = False
    async with aiohttp.ClientSession(connector=connector) as http:
        lanes = [asyncio.create_task(lane(http)) for _ in range(workload.concurrency)]
        done, pending = await asyncio.wait(lanes, timeout=workload.time_limit_s)
        if pending:
            timed_out = True
            logger.warning(
                "%s: time limit %.0fs reached, cancelling %d lanes",
                workload.name, workload.time_limit_s, len(pending),
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    wall = time.monotonic() - started
    unsent = workload.request_count - len(results)
    return RunResult(workload.name, results, wall, unsent, timed_out)
