"""``POST /rerank`` and ``/v1/rerank``: vLLM's rerank API (Jina/Cohere shape).

Each (query, document) pair is one prompt that holds an engine slot and pays
its prefill (a cross-encoder scores a pair in one forward pass, no decode), so
reranking loads the worker, its KV cache and its prefix cache like any prompt.
Pairs run side by side, as vLLM submits them together. The score is the share
of the query's words found in the document: deterministic, in [0, 1], and
higher for documents that repeat the query, which is all tests need.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from corral.errors import InvalidRequest
from corral.simulator import protocol as p

if TYPE_CHECKING:
    from corral.simulator.server import SimWorker

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")


def score(query: str, document: str) -> float:
    """The share of the query's distinct words (case-folded) in ``document``."""
    wanted = set(_WORD.findall(query.casefold()))
    if not wanted:
        return 0.0
    found = wanted & set(_WORD.findall(document.casefold()))
    return len(found) / len(wanted)


def _documents(body: dict[str, Any]) -> list[str]:
    documents = body.get("documents")
    if not isinstance(documents, list):
        raise InvalidRequest("'documents' must be a list", param="documents")
    texts = []
    for i, doc in enumerate(documents):
        if isinstance(doc, dict):
            doc = doc.get("text")
        if not isinstance(doc, str):
            raise InvalidRequest(
                f"documents[{i}] must be a string or an object with a string 'text'",
                param=f"documents[{i}]",
            )
        texts.append(doc)
    return texts


async def _prefill(worker: SimWorker, prompt: list[int]) -> None:
    async with worker.engine.slot(prompt) as slot:
        await slot.prefill()


async def rerank(
    worker: SimWorker, _: web.Request, body: dict[str, Any]
) -> web.StreamResponse:
    """Score every document against the query; best first, ``top_n`` of them
    (0 or absent: all)."""
    model = worker.check_model(body)
    query = body.get("query")
    if not isinstance(query, str):
        raise InvalidRequest("'query' must be a string", param="query")
    documents = _documents(body)
    top_n = p.opt_int(body, "top_n", minimum=0) or len(documents)
    assert worker.tokenizer is not None
    head = worker.tokenizer.encode(query, add_special_tokens=True)
    prompts = [
        head + worker.tokenizer.encode(doc, add_special_tokens=False)
        for doc in documents
    ]
    limit = worker.config.max_model_len
    for i, prompt in enumerate(prompts):
        if len(prompt) > limit:
            raise InvalidRequest(
                f"The query and documents[{i}] are {len(prompt)} tokens, more than "
                f"the model's maximum context length of {limit} tokens.",
                param=f"documents[{i}]",
            )
    await asyncio.gather(*(_prefill(worker, prompt) for prompt in prompts))
    ranked = sorted(
        ((score(query, doc), i) for i, doc in enumerate(documents)),
        key=lambda pair: (-pair[0], pair[1]),
    )
    return web.json_response(
        {
            "id": p.new_id("rerank"),
            "model": model,
            "usage": {"total_tokens": sum(len(x) for x in prompts)},
            "results": [
                {
                    "index": i,
                    "document": {"text": documents[i]},
                    "relevance_score": value,
                }
                for value, i in ranked[:top_n]
            ],
        }
    )
