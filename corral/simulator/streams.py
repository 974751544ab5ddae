"""Writing Server-Sent Events and merging the deltas of several prompts."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from aiohttp import web

from corral.simulator.generation import Delta

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def sse(event: dict[str, Any]) -> bytes:
    """One SSE event as the engines write it: ``data: <json>`` and a blank line."""
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def named_sse(event: dict[str, Any]) -> bytes:
    """One SSE event with an ``event:`` line naming its ``type``, as the
    Responses API and Anthropic's Messages API stream them
    (https://html.spec.whatwg.org/multipage/server-sent-events.html)."""
    data = json.dumps(event, separators=(",", ":")).encode()
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + data + b"\n\n"


async def write_sse(
    request: web.Request,
    events: AsyncGenerator[dict[str, Any], None],
    *,
    drop_after: int | None,
    named: bool = False,
) -> web.StreamResponse:
    """Stream ``events`` then ``[DONE]``; with ``drop_after`` set, cut the
    connection after that many events instead (a worker dying mid-answer).

    ``named`` streams write each event under its ``type`` and end without
    ``[DONE]``: their last event says the answer is complete.
    """
    response = web.StreamResponse(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    await response.prepare(request)
    sent = 0
    async with aclosing(events):
        async for event in events:
            if drop_after is not None and sent >= drop_after:
                _drop(request)
                return response
            await response.write(named_sse(event) if named else sse(event))
            sent += 1
    if drop_after is not None and sent >= drop_after:
        _drop(request)
        return response
    if not named:
        await response.write(DONE)
    await response.write_eof()
    return response


def _drop(request: web.Request) -> None:
    logger.info("dropping the connection mid-stream (fault injection)")
    if request.transport is not None:
        request.transport.abort()
    # The handler ends here; nothing else may be written on this connection.
    raise asyncio.CancelledError


async def merge(
    sources: list[AsyncGenerator[list[Delta], None]],
) -> AsyncGenerator[list[Delta], None]:
    """Interleave several generators' steps as they come (several prompts in
    one completions request run side by side, as separate engine requests)."""
    if len(sources) == 1:
        async with aclosing(sources[0]) as only:
            async for step in only:
                yield step
        return
    queue: asyncio.Queue[list[Delta] | BaseException | None] = asyncio.Queue()

    async def pump(source: AsyncGenerator[list[Delta], None]) -> None:
        try:
            async with aclosing(source) as gen:
                async for step in gen:
                    await queue.put(step)
        except Exception as exc:
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(s)) for s in sources]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
