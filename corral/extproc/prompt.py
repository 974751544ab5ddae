"""Turn a parsed request into the token ids the engine will see.

Chat forms are rendered through the model's chat template (parts flattened to
text, ``tools`` passed) and encoded without special tokens (the template writes
them); completions-style text is encoded with them; token ids sent by the
client are used as given. Prompts above ``thread_threshold`` characters are
rendered and encoded in a worker thread, so one long prompt never stalls the
event loop for the others (the Rust tokenizer releases the GIL).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from corral.observability.metrics import TOKENIZE_SECONDS, TOKENIZER_CACHE
from corral.openai.requests import ParsedRequest
from corral.tokenizer.cache import Encoded, TokenizerCache
from corral.tokenizer.model import ChatTemplateError, ModelTokenizer

logger = logging.getLogger(__name__)

DEFAULT_THREAD_THRESHOLD = 16 * 1024


class PromptTokenizer:
    """Renders and encodes prompts of one model through a ``TokenizerCache``."""

    def __init__(
        self,
        tokenizer: ModelTokenizer,
        *,
        cache: TokenizerCache | None = None,
        thread_threshold: int = DEFAULT_THREAD_THRESHOLD,
    ) -> None:
        self.tokenizer = tokenizer
        self.cache = cache if cache is not None else TokenizerCache(tokenizer)
        self.thread_threshold = thread_threshold

    def __repr__(self) -> str:
        return f"<PromptTokenizer {self.cache!r}>"

    async def tokens(self, request: ParsedRequest) -> Sequence[int] | None:
        """The prompt's token ids, or ``None`` when the request has no prompt
        or the chat template rejects it (routing then uses the text; the worker,
        whose template may differ, judges the request itself)."""
        if request.token_ids is not None:
            return request.token_ids
        size = len(request.text or "") + sum(
            len(m.get("content") or "") for m in request.messages or ()
        )
        if request.messages is None and request.text is None:
            return None
        started = time.perf_counter()
        try:
            if size >= self.thread_threshold:
                result = await asyncio.to_thread(self._encode, request)
            else:
                result = self._encode(request)
        except ChatTemplateError as exc:
            logger.debug("chat template: %s; routing on text", exc)
            return None
        TOKENIZE_SECONDS.labels(result.level).observe(time.perf_counter() - started)
        _count(result.level)
        return result.ids

    def _encode(self, request: ParsedRequest) -> Encoded:
        if request.messages is not None:
            text = self.tokenizer.render_chat(request.messages, tools=request.tools)
        else:
            assert request.text is not None
            text = request.text
        return self.cache.encode(text, add_special_tokens=request.add_special_tokens)


_L0_HIT = TOKENIZER_CACHE.labels("l0", "hit")
_L0_MISS = TOKENIZER_CACHE.labels("l0", "miss")
_L1_HIT = TOKENIZER_CACHE.labels("l1", "hit")
_L1_MISS = TOKENIZER_CACHE.labels("l1", "miss")


def _count(level: str) -> None:
    if level == "l0":
        _L0_HIT.inc()
        return
    _L0_MISS.inc()
    (_L1_HIT if level == "l1" else _L1_MISS).inc()
