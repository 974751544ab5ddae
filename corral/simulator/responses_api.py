"""``POST /v1/responses``: the OpenAI Responses API as vLLM serves it.

Only text is simulated: ``input`` is a string or a list of message items
(content a string or ``input_text`` / ``output_text`` parts), ``instructions``
becomes a system message, and the conversation is rendered through the chat
template like a chat completion. The answer is one ``message`` item holding one
``output_text`` part. An answer cut by ``max_output_tokens`` is ``incomplete``
with ``incomplete_details.reason == "max_output_tokens"``, as the API documents
(https://platform.openai.com/docs/api-reference/responses/object); streamed, it
ends with ``response.incomplete`` instead of ``response.completed``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from corral.errors import InvalidRequest
from corral.simulator import protocol as p
from corral.simulator.api import check_length, run_steps
from corral.simulator.generation import Outcome, SamplingParams
from corral.simulator.streams import write_sse

if TYPE_CHECKING:
    from corral.simulator.server import SimWorker

logger = logging.getLogger(__name__)

_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
# The Responses API's "developer" role is the chat "system" role by another name.
_ROLES["developer"] = "system"
_TEXT_PARTS = ("input_text", "output_text", "text")


def _item_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"{where} must be a string or a list of content parts", param=where
        )
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS:
            raise InvalidRequest(
                f"{where}[{i}]: only text parts ({', '.join(_TEXT_PARTS)}) are "
                "supported by this text-only model",
                param=f"{where}[{i}]",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(
                f"{where}[{i}].text must be a string", param=f"{where}[{i}].text"
            )
        texts.append(text)
    return "\n".join(texts)


def input_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages; ``InvalidRequest`` on
    anything else than text messages."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequest(
                "'instructions' must be a string", param="instructions"
            )
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if items is None:
        raise InvalidRequest("'input' is a required property", param="input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list) or not items:
        raise InvalidRequest(
            "'input' must be a string or a non-empty list of items", param="input"
        )
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        if item.get("type", "message") != "message":
            raise InvalidRequest(
                f"{where}: item type {item.get('type')!r} is not simulated; only "
                "'message' items are",
                param=f"{where}.type",
            )
        role = item.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"{where}.role must be one of {sorted(_ROLES)}", param=f"{where}.role"
            )
        content = _item_text(item.get("content"), f"{where}.content")
        messages.append({"role": _ROLES[role], "content": content})
    return messages


@dataclass
class _Shape:
    """What every ``response`` object of one request repeats."""

    rid: str
    created: int
    model: str
    body: dict[str, Any]
    max_output_tokens: int | None
    message_id: str

    def message(self, text: str, status: str) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [] if status == "in_progress" else [self.part(text)],
        }

    @staticmethod
    def part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def response(
        self, status: str, text: str | None, outcome: Outcome | None
    ) -> dict[str, Any]:
        output = [] if text is None else [self.message(text, "completed")]
        usage = None
        if outcome is not None:
            usage = {
                "input_tokens": outcome.prompt_tokens,
                "input_tokens_details": {"cached_tokens": outcome.cached_tokens},
                "output_tokens": outcome.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
            }
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "model": self.model,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": self.body.get("instructions"),
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.body.get("metadata") or {},
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "temperature": self.body.get("temperature", 1.0),
            "top_p": self.body.get("top_p", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "truncation": "disabled",
            "usage": usage,
        }


async def responses(
    worker: SimWorker, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """Answer a Responses API request, streamed or not."""
    model = worker.check_model(body)
    messages = input_messages(body)
    if body.get("previous_response_id") is not None:
        # Responses are not stored, so none can be continued.
        raise InvalidRequest(
            "previous_response_id is not supported: responses are not stored",
            param="previous_response_id",
        )
    p.check_numbers(body, "temperature", "top_p")
    max_output = p.opt_int(body, "max_output_tokens", minimum=1)
    params = SamplingParams(max_tokens=max_output)
    stream = p.opt_bool(body, "stream")
    assert worker.tokenizer is not None
    text = worker.tokenizer.render_chat(messages, add_generation_prompt=True)
    # As for chat: the template already wrote the special tokens.
    prompt = worker.tokenizer.encode(text, add_special_tokens=False)
    check_length(worker, prompt, params)
    outcome = Outcome(prompt_tokens=len(prompt))
    steps = run_steps(worker, [prompt], params, [outcome])
    shape = _Shape(
        p.new_id("resp", "_"),
        p.now(),
        model,
        body,
        max_output,
        p.new_id("msg", "_"),
    )
    if not stream:
        answer, reason = "", "stop"
        async with aclosing(steps):
            async for deltas in steps:
                for d in deltas:
                    answer += d.text
                    reason = d.finish_reason or reason
        status = "incomplete" if reason == "length" else "completed"
        return web.json_response(shape.response(status, answer, outcome))
    return await write_sse(
        request,
        _events(shape, steps, outcome),
        drop_after=worker.faults.drop_after_chunks,
        named=True,
    )


async def _events(
    shape: _Shape, steps: AsyncGenerator[Any, None], outcome: Outcome
) -> AsyncGenerator[dict[str, Any], None]:
    seq = 0

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {"type": kind, "sequence_number": seq - 1, **fields}

    where = {"item_id": shape.message_id, "output_index": 0, "content_index": 0}
    answer, reason, first = "", "stop", True
    async with aclosing(steps):
        async for deltas in steps:
            if first:
                # Sent once the first token exists, as for chat, so a client's
                # first bytes mark the end of prefill on every endpoint.
                first = False
                yield event(
                    "response.created",
                    response=shape.response("in_progress", None, None),
                )
                yield event(
                    "response.in_progress",
                    response=shape.response("in_progress", None, None),
                )
                yield event(
                    "response.output_item.added",
                    output_index=0,
                    item=shape.message("", "in_progress"),
                )
                yield event(
                    "response.content_part.added",
                    item_id=shape.message_id,
                    output_index=0,
                    content_index=0,
                    part=shape.part(""),
                )
            for d in deltas:
                answer += d.text
                reason = d.finish_reason or reason
                yield event(
                    "response.output_text.delta", **where, delta=d.text, logprobs=[]
                )
    yield event("response.output_text.done", **where, text=answer, logprobs=[])
    yield event(
        "response.content_part.done",
        item_id=shape.message_id,
        output_index=0,
        content_index=0,
        part=shape.part(answer),
    )
    yield event(
        "response.output_item.done",
        output_index=0,
        item=shape.message(answer, "completed"),
    )
    status = "incomplete" if reason == "length" else "completed"
    yield event(f"response.{status}", response=shape.response(status, answer, outcome))
