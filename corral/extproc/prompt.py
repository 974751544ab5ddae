"""Turn a parsed request into the token ids the engine will see.

Chat forms are rendered through the model's chat template (parts flattened to
text, ``tools`` passed) and encoded without special tokens (the template writes
them); completions-style text is encoded with them; token ids sent by the
client are used as given. Prompts above ``thread_threshold`` characters are
rendered and encoded in a worker thread, so one long prompt never stalls the
event loop for the others (the Rust tokenizer releases the GIL).

Only the first ``routing_chars`` characters of a prompt are encoded: routing
matches prefixes, and a 4 MiB prompt would otherwise cost seconds of CPU and a
prefix-tree entry of a million tokens for the same decision. The cut falls on
whitespace, where byte-pair tokenizers split words anyway, so the ids of the
prefix are those of the whole prompt's start. The prompt's full token count,
which load accounting needs, is then estimated from the prefix's ratio.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from corral.errors import InvalidRequest
from corral.observability.metrics import TOKENIZE_SECONDS, TOKENIZER_CACHE
from corral.openai.requests import ParsedRequest
from corral.tokenizer.cache import Encoded, TokenizerCache
from corral.tokenizer.model import (
    ChatTemplateError,
    ModelTokenizer,
    raise_if_not_unicode,
)

logger = logging.getLogger(__name__)

DEFAULT_THREAD_THRESHOLD = 16 * 1024
DEFAULT_ROUTING_CHARS = 256 * 1024


@dataclass(frozen=True, slots=True)
class PromptTokens:
    """Token ids of the prompt's start (all of it unless it was cut) and the
    prompt's token count (exact, or estimated when cut)."""

    ids: Sequence[int]
    count: int


class PromptTokenizer:
    """Renders and encodes prompts of one model through a ``TokenizerCache``."""

    def __init__(
        self,
        tokenizer: ModelTokenizer,
        *,
        cache: TokenizerCache | None = None,
        thread_threshold: int = DEFAULT_THREAD_THRESHOLD,
        routing_chars: int = DEFAULT_ROUTING_CHARS,
    ) -> None:
        self.tokenizer = tokenizer
        self.cache = cache if cache is not None else TokenizerCache(tokenizer)
        self.thread_threshold = thread_threshold
        self.routing_chars = routing_chars

    def __repr__(self) -> str:
        return f"<PromptTokenizer {self.cache!r}>"

    async def tokens(self, request: ParsedRequest) -> PromptTokens | None:
        """The prompt's token ids, or ``None`` when the request has no prompt
        or it cannot be tokenized (the chat template rejects it, or the text
        holds what no tokenizer takes, such as lone surrogates). Routing then
        uses the text; the worker, whose template may differ, judges the request
        itself."""
        if request.token_ids is not None:
            return PromptTokens(request.token_ids, len(request.token_ids))
        if request.messages is None and request.text is None:
            return None
        size = len(request.text or "") + sum(
            len(m.get("content") or "") if isinstance(m.get("content"), str) else 0
            for m in request.messages or ()
        )
        started = time.perf_counter()
        try:
            if size >= self.thread_threshold:
                result = await asyncio.to_thread(self._encode, request)
            else:
                result = self._encode(request)
        except ChatTemplateError as exc:
            logger.debug("chat template: %s; routing on text", exc)
            return None
        except InvalidRequest:
            raise
        except (TypeError, ValueError, UnicodeError) as exc:
            logger.debug("prompt not tokenizable (%s); routing on text", exc)
            return None
        encoded, count = result
        TOKENIZE_SECONDS.labels(encoded.level).observe(time.perf_counter() - started)
        _count(encoded.level)
        return PromptTokens(encoded.ids, count)

    def _encode(self, request: ParsedRequest) -> tuple[Encoded, int]:
        if request.messages is not None:
            text = self.tokenizer.render_chat(request.messages, tools=request.tools)
        else:
            assert request.text is not None
            text = request.text
        head = _routing_prefix(text, self.routing_chars)
        try:
            encoded = self.cache.encode(
                head, add_special_tokens=request.add_special_tokens
            )
        except TypeError:
            raise_if_not_unicode(head)
            raise
        count = len(encoded.ids)
        if len(head) < len(text):
            count = int(count * len(text) / max(1, len(head)))
        return encoded, count


def _routing_prefix(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at whitespace when there is
    some in the last quarter of the limit."""
    if len(text) <= limit:
        return text
    cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit))
    return text[: cut if cut >= limit * 3 // 4 else limit]


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
