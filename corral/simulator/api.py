"""The generation endpoints: OpenAI chat and completions, embeddings, and
SGLang's native ``/generate``, shaped as the engines answer them."""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from aiohttp import web

from corral.errors import InvalidRequest
from corral.simulator import protocol as p
from corral.simulator.generation import (
    Delta,
    Outcome,
    SamplingParams,
)
from corral.simulator.generation import (
    generate as run_prompt,
)
from corral.simulator.streams import merge, write_sse

if TYPE_CHECKING:
    from corral.simulator.server import SimWorker

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 32


def check_length(
    worker: SimWorker, prompt: Sequence[int], params: SamplingParams
) -> None:
    """Raise ``InvalidRequest`` when prompt plus answer cannot fit the window."""
    # vLLM rejects what cannot fit the context window before scheduling it.
    limit = worker.config.max_model_len
    wanted = len(prompt) + (params.max_tokens or 0)
    if len(prompt) >= limit or wanted > limit:
        raise InvalidRequest(
            f"This model's maximum context length is {limit} tokens. However, you "
            f"requested {wanted} tokens ({len(prompt)} in the messages, "
            f"{params.max_tokens or 0} in the completion). Please reduce the length "
            "of the messages or completion."
        )


def run_steps(
    worker: SimWorker,
    prompts: list[list[int]],
    params: SamplingParams,
    outcomes: list[Outcome],
) -> AsyncGenerator[list[Delta], None]:
    """The merged engine steps of ``prompts``, each with ``params.n`` choices;
    ``outcomes`` (one per prompt) fill in as tokens come."""
    assert worker.vocab is not None
    sources = [
        run_prompt(
            worker.engine,
            worker.metrics,
            worker.vocab,
            prompt,
            params,
            out,
            index_offset=i * params.n,
        )
        for i, (prompt, out) in enumerate(zip(prompts, outcomes, strict=True))
    ]
    return merge(sources)


def _total(outcomes: list[Outcome]) -> Outcome:
    return Outcome(
        prompt_tokens=sum(o.prompt_tokens for o in outcomes),
        completion_tokens=sum(o.completion_tokens for o in outcomes),
        cached_tokens=sum(o.cached_tokens for o in outcomes),
    )


async def collect(
    steps: AsyncGenerator[list[Delta], None], count: int
) -> tuple[list[str], list[str]]:
    """Run ``steps`` to the end: each choice's text and finish reason."""
    texts = [""] * count
    reasons = ["stop"] * count
    async with aclosing(steps):
        async for deltas in steps:
            for d in deltas:
                texts[d.index] += d.text
                if d.finish_reason:
                    reasons[d.index] = d.finish_reason
    return texts, reasons


async def chat_completions(
    worker: SimWorker, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    model = worker.check_model(body)
    messages = p.chat_messages(body)
    params = p.sampling_params(body, chat=True)
    stream = p.opt_bool(body, "stream")
    with_usage = p.include_usage(body, stream)
    assert worker.tokenizer is not None
    add_generation_prompt = body.get("add_generation_prompt", True)
    if not isinstance(add_generation_prompt, bool):
        raise InvalidRequest("'add_generation_prompt' must be a boolean")
    text = worker.tokenizer.render_chat(
        messages, add_generation_prompt=add_generation_prompt
    )
    # vLLM encodes a rendered chat without adding special tokens: the template
    # already wrote them.
    prompt = worker.tokenizer.encode(text, add_special_tokens=False)
    check_length(worker, prompt, params)
    outcomes = [Outcome(prompt_tokens=len(prompt))]
    steps = run_steps(worker, [prompt], params, outcomes)
    rid, created = p.new_id("chatcmpl"), p.now()
    if not stream:
        texts, reasons = await collect(steps, params.n)
        return web.json_response(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": i,
                        "message": {
                            "role": "assistant",
                            "content": texts[i],
                            "tool_calls": [],
                        },
                        "logprobs": None,
                        "finish_reason": reasons[i],
                        "stop_reason": None,
                    }
                    for i in range(params.n)
                ],
                "usage": p.usage(outcomes[0]),
            }
        )

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }

    async def events() -> AsyncGenerator[dict[str, Any], None]:
        first = True
        async with aclosing(steps):
            async for deltas in steps:
                if first:
                    # As vLLM does, the role goes out in a chunk per choice once
                    # the first token exists, so a client's first chunk marks
                    # the end of prefill.
                    first = False
                    for i in range(params.n):
                        yield chunk(
                            [
                                {
                                    "index": i,
                                    "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                for d in deltas:
                    yield chunk(
                        [
                            {
                                "index": d.index,
                                "delta": {"content": d.text},
                                "logprobs": None,
                                "finish_reason": d.finish_reason,
                                "stop_reason": None,
                            }
                        ]
                    )
        if with_usage:
            yield {**chunk([]), "usage": p.usage(outcomes[0])}

    return await write_sse(
        request, events(), drop_after=worker.faults.drop_after_chunks
    )


async def completions(
    worker: SimWorker, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    model = worker.check_model(body)
    raw_prompts = p.completion_prompts(body)
    params = p.sampling_params(body, chat=False)
    if body.get("max_tokens") is None:
        # The completions API's documented default answer length.
        params = SamplingParams(
            n=params.n,
            max_tokens=16,
            stop=params.stop,
            seed=params.seed,
            ignore_eos=params.ignore_eos,
        )
    stream = p.opt_bool(body, "stream")
    with_usage = p.include_usage(body, stream)
    assert worker.tokenizer is not None
    prompts = [
        worker.tokenizer.encode(x, add_special_tokens=True) if isinstance(x, str) else x
        for x in raw_prompts
    ]
    for prompt in prompts:
        check_length(worker, prompt, params)
    outcomes = [Outcome(prompt_tokens=len(x)) for x in prompts]
    steps = run_steps(worker, prompts, params, outcomes)
    rid, created = p.new_id("cmpl"), p.now()
    count = len(prompts) * params.n
    if not stream:
        texts, reasons = await collect(steps, count)
        return web.json_response(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": i,
                        "text": texts[i],
                        "logprobs": None,
                        "finish_reason": reasons[i],
                        "stop_reason": None,
                    }
                    for i in range(count)
                ],
                "usage": p.usage(_total(outcomes)),
            }
        )

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
        }

    async def events() -> AsyncGenerator[dict[str, Any], None]:
        async with aclosing(steps):
            async for deltas in steps:
                for d in deltas:
                    yield chunk(
                        [
                            {
                                "index": d.index,
                                "text": d.text,
                                "logprobs": None,
                                "finish_reason": d.finish_reason,
                                "stop_reason": None,
                            }
                        ]
                    )
        if with_usage:
            yield {**chunk([]), "usage": p.usage(_total(outcomes))}

    return await write_sse(
        request, events(), drop_after=worker.faults.drop_after_chunks
    )


async def embeddings(
    worker: SimWorker, _: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """Deterministic unit vectors, one per input; no engine time is spent."""
    model = worker.check_model(body)
    inputs = p.completion_prompts({"prompt": body.get("input")})
    assert worker.tokenizer is not None
    data, total = [], 0
    for i, item in enumerate(inputs):
        ids = worker.tokenizer.encode(item) if isinstance(item, str) else item
        total += len(ids)
        rng = random.Random(hashlib.sha256(repr(ids).encode()).digest())
        vector = [rng.gauss(0.0, 1.0) for _ in range(EMBEDDING_DIM)]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        data.append(
            {"object": "embedding", "index": i, "embedding": [v / norm for v in vector]}
        )
    return web.json_response(
        {
            "id": p.new_id("embd"),
            "object": "list",
            "created": p.now(),
            "model": model,
            "data": data,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
    )


async def generate(
    worker: SimWorker, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """SGLang's native API: ``text`` or ``input_ids`` plus ``sampling_params``;
    streamed chunks carry the whole text so far, as SGLang sends them."""
    assert worker.tokenizer is not None
    text, input_ids = body.get("text"), body.get("input_ids")
    if isinstance(text, str) and input_ids is None:
        prompt = worker.tokenizer.encode(text, add_special_tokens=True)
    elif (
        text is None
        and isinstance(input_ids, list)
        and input_ids
        and all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in input_ids
        )
    ):
        prompt = list(input_ids)
    else:
        raise InvalidRequest(
            "give exactly one of 'text' (a string) or 'input_ids' "
            "(a list of token ids); batches are not simulated"
        )
    sp = body.get("sampling_params") or {}
    if not isinstance(sp, dict):
        raise InvalidRequest(
            "'sampling_params' must be an object", param="sampling_params"
        )
    p.check_numbers(sp, "temperature", "top_p", "top_k")
    params = SamplingParams(
        max_tokens=p.opt_int(sp, "max_new_tokens", minimum=1) or 128,
        stop=p.stop_strings(sp.get("stop")),
        seed=p.opt_int(sp, "sampling_seed", minimum=0),
        ignore_eos=p.opt_bool(sp, "ignore_eos"),
    )
    stream = p.opt_bool(body, "stream")
    check_length(worker, prompt, params)
    outcome = Outcome(prompt_tokens=len(prompt))
    steps = run_steps(worker, [prompt], params, [outcome])
    rid = p.new_id("gen")[4:]

    def result(so_far: str, finish: Delta | None) -> dict[str, Any]:
        reason: dict[str, Any] | None = None
        if finish is not None and finish.finish_reason == "length":
            reason = {"type": "length", "length": outcome.completion_tokens}
        elif finish is not None:
            reason = {"type": "stop", "matched": finish.matched_stop}
        return {
            "text": so_far,
            "meta_info": {
                "id": rid,
                "finish_reason": reason,
                "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "cached_tokens": outcome.cached_tokens,
            },
        }

    async def events() -> AsyncGenerator[dict[str, Any], None]:
        so_far = ""
        async with aclosing(steps):
            async for deltas in steps:
                d = deltas[0]
                so_far += d.text
                yield result(so_far, d if d.finish_reason else None)

    if stream:
        return await write_sse(
            request, events(), drop_after=worker.faults.drop_after_chunks
        )
    last: dict[str, Any] = {}
    async with aclosing(events()) as gen:
        async for event in gen:
            last = event
    return web.json_response(last)
