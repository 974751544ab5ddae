"""vLLM's ``POST /tokenize`` and ``POST /detokenize``: the worker's tokenizer
over HTTP, without engine time.

``/tokenize`` takes ``prompt`` (encoded with ``add_special_tokens``, default
true) or ``messages`` (rendered through the chat template, then encoded with
``add_special_tokens`` default false, as vLLM does) and answers ``count``,
``max_model_len``, ``tokens`` and ``token_strs`` (null unless
``return_token_strs``). ``/detokenize`` takes ``tokens`` and answers ``prompt``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from corral.errors import InvalidRequest
from corral.simulator import protocol as p

if TYPE_CHECKING:
    from corral.simulator.server import SimWorker

logger = logging.getLogger(__name__)


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean", param=name)
    return value


async def tokenize(
    worker: SimWorker, _: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    worker.check_model(body)
    tokenizer = worker.tokenizer
    assert tokenizer is not None
    if ("prompt" in body) == ("messages" in body):
        raise InvalidRequest("give exactly one of 'prompt' or 'messages'")
    if "messages" in body:
        messages = p.chat_messages(body)
        text = tokenizer.render_chat(
            messages,
            add_generation_prompt=_flag(body, "add_generation_prompt", True),
        )
        ids = tokenizer.encode(
            text, add_special_tokens=_flag(body, "add_special_tokens", False)
        )
    else:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise InvalidRequest("'prompt' must be a string", param="prompt")
        ids = tokenizer.encode(
            prompt, add_special_tokens=_flag(body, "add_special_tokens", True)
        )
    strs = None
    if _flag(body, "return_token_strs", False):
        strs = [tokenizer.id_to_token(i) or "" for i in ids]
    return web.json_response(
        {
            "count": len(ids),
            "max_model_len": worker.config.max_model_len,
            "tokens": ids,
            "token_strs": strs,
        }
    )


async def detokenize(
    worker: SimWorker, _: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    worker.check_model(body)
    tokenizer = worker.tokenizer
    assert tokenizer is not None
    ids = body.get("tokens")
    size = tokenizer.vocab_size
    if not isinstance(ids, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in ids
    ):
        raise InvalidRequest("'tokens' must be a list of token ids", param="tokens")
    bad = [t for t in ids if not 0 <= t < size]
    if bad:
        raise InvalidRequest(
            f"token id {bad[0]} is out of vocabulary (size {size})", param="tokens"
        )
    return web.json_response({"prompt": tokenizer.decode(ids)})
