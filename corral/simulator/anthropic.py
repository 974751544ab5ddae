"""``POST /v1/messages``: Anthropic's Messages API, which vLLM serves too.

Request and answer follow https://docs.anthropic.com/en/api/messages; streamed
answers use its event sequence (https://docs.anthropic.com/en/api/streaming):
``message_start``, ``content_block_start``, ``content_block_delta`` per token,
``content_block_stop``, ``message_delta`` (stop reason, output tokens),
``message_stop``. Errors on this path use Anthropic's envelope
(``error_body``), which the server's error middleware picks by path.
Only text is simulated: image, document and tool blocks are refused with 400.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from aiohttp import web

from corral.errors import ANTHROPIC_ERROR_TYPES, InvalidRequest
from corral.simulator import protocol as p
from corral.simulator.api import check_length, run_steps
from corral.simulator.generation import Delta, Outcome, SamplingParams
from corral.simulator.streams import write_sse

if TYPE_CHECKING:
    from corral.simulator.server import SimWorker

logger = logging.getLogger(__name__)

PATH = "/v1/messages"

STOP_REASONS = {"length": "max_tokens", "stop": "end_turn"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """An error answer in Anthropic's shape."""
    kind = ANTHROPIC_ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return {"type": "error", "error": {"type": kind, "message": message}}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: Input should be a string or a list of blocks")
    texts = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequest(
                f"{where}.{i}: only text blocks are supported by this text-only model"
            )
        text = block.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"{where}.{i}.text: Input should be a valid string")
        texts.append(text)
    return "\n".join(texts)


def parse(body: dict[str, Any]) -> tuple[list[dict[str, Any]], SamplingParams]:
    """The chat messages and sampling parameters of a Messages API request."""
    if not isinstance(body.get("model"), str):
        raise InvalidRequest("model: Field required (a string)")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise InvalidRequest("max_tokens: Field required (an integer)")
    if max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be greater than or equal to 1")
    messages: list[dict[str, Any]] = []
    if body.get("system") is not None:
        messages.append({"role": "system", "content": _text(body["system"], "system")})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages: Field required (a non-empty list)")
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages.{i}: Input should be an object")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(
                f"messages.{i}.role: Input should be 'user' or 'assistant'"
            )
        content = _text(message.get("content"), f"messages.{i}.content")
        messages.append({"role": role, "content": content})
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise InvalidRequest("stop_sequences: Input should be a list of strings")
    p.check_numbers(body, "temperature", "top_p", "top_k")
    params = SamplingParams(
        max_tokens=max_tokens, stop=tuple(s for s in stops or () if s)
    )
    return messages, params


def _stop(last: Delta | None) -> tuple[str, str | None]:
    if last is None or last.finish_reason is None:
        return "end_turn", None
    if last.matched_stop is not None:
        return "stop_sequence", last.matched_stop
    return STOP_REASONS.get(last.finish_reason, "end_turn"), None


async def messages(
    worker: SimWorker, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """Answer a Messages API request, streamed or not."""
    chat, params = parse(body)
    model = worker.check_model(body)
    stream = p.opt_bool(body, "stream")
    assert worker.tokenizer is not None
    text = worker.tokenizer.render_chat(chat, add_generation_prompt=True)
    # As for chat: the template already wrote the special tokens.
    prompt = worker.tokenizer.encode(text, add_special_tokens=False)
    check_length(worker, prompt, params)
    outcome = Outcome(prompt_tokens=len(prompt))
    steps = run_steps(worker, [prompt], params, [outcome])
    mid = p.new_id("msg", "_")
    if stream:
        return await write_sse(
            request,
            _events(mid, model, steps, outcome),
            drop_after=worker.faults.drop_after_chunks,
            named=True,
        )
    answer, last = "", None
    async with aclosing(steps):
        async for deltas in steps:
            for d in deltas:
                answer += d.text
                last = d
    reason, sequence = _stop(last)
    return web.json_response(
        {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": answer}],
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": {
                "input_tokens": outcome.prompt_tokens,
                "output_tokens": outcome.completion_tokens,
            },
        }
    )


async def _events(
    mid: str,
    model: str,
    steps: AsyncGenerator[list[Delta], None],
    outcome: Outcome,
) -> AsyncGenerator[dict[str, Any], None]:
    last: Delta | None = None
    async with aclosing(steps):
        async for deltas in steps:
            if last is None:
                # Sent once the first token exists, as for chat, so a client's
                # first bytes mark the end of prefill on every endpoint.
                yield {
                    "type": "message_start",
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": outcome.prompt_tokens,
                            "output_tokens": 0,
                        },
                    },
                }
                yield {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
            for d in deltas:
                last = d
                yield {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": d.text},
                }
    reason, sequence = _stop(last)
    yield {"type": "content_block_stop", "index": 0}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": sequence},
        "usage": {"output_tokens": outcome.completion_tokens},
    }
    yield {"type": "message_stop"}
