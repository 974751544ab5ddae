"""Deterministic output text drawn from a tokenizer's vocabulary.

Only tokens whose text is a plain word (a leading space, ASCII
letters, an optional trailing comma or full stop) are drawn, so any sequence of
them decodes to valid UTF-8 and streamed pieces concatenate to the whole text.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from corral.errors import ConfigError
from corral.tokenizer import ModelTokenizer

logger = logging.getLogger(__name__)

_WORD = re.compile(r" [A-Za-z]{1,12}[.,]?")
_PRINTABLE = re.compile(r" ?[^\s\ufffd]{1,16}")


@dataclass(frozen=True)
class Vocabulary:
    """Token ids that are safe to emit, with the text each adds to the output."""

    ids: tuple[int, ...]
    pieces: tuple[str, ...]


_vocabularies: weakref.WeakKeyDictionary[ModelTokenizer, Vocabulary] = (
    weakref.WeakKeyDictionary()
)


def vocabulary(tokenizer: ModelTokenizer) -> Vocabulary:
    """The clean part of ``tokenizer``'s vocabulary (computed once per tokenizer)."""
    found = _vocabularies.get(tokenizer)
    if found is None:
        found = _build(tokenizer)
        _vocabularies[tokenizer] = found
    return found


def _build(tokenizer: ModelTokenizer) -> Vocabulary:
    # A token's text is what it adds after another token: decoders such as
    # SentencePiece's drop a leading space at the very start of the output, so
    # each id is decoded behind an anchor token and the anchor's text removed.
    anchor_ids = tokenizer.encode("a", add_special_tokens=False)
    anchor = anchor_ids[-1] if anchor_ids else 0
    anchor_text = tokenizer.decode([anchor], skip_special_tokens=False)
    specials = tokenizer.special_token_texts
    size = tokenizer.vocab_size
    candidates = [
        i for i in range(size) if (tokenizer.id_to_token(i) or "") not in specials
    ]
    texts = tokenizer.raw.decode_batch(
        [[anchor, i] for i in candidates], skip_special_tokens=False
    )
    for pattern in (_WORD, _PRINTABLE):
        ids: list[int] = []
        pieces: list[str] = []
        for token_id, text in zip(candidates, texts, strict=True):
            if not text.startswith(anchor_text):
                continue
            piece = text[len(anchor_text) :]
            if pattern.fullmatch(piece):
                ids.append(token_id)
                pieces.append(piece)
        if len(ids) >= 16:
            logger.debug("%s: %d clean tokens to sample", tokenizer.name, len(ids))
            return Vocabulary(tuple(ids), tuple(pieces))
    raise ConfigError(f"tokenizer {tokenizer.name} has too few plain-text tokens")


def seed_for(seed: int | None, prompt: Sequence[int], index: int) -> str:
    """The random seed of choice ``index``: the request's seed, else the prompt."""
    if seed is not None:
        return f"seed:{seed}:{index}"
    digest = hashlib.sha256(",".join(map(str, prompt)).encode()).hexdigest()
    return f"prompt:{digest}:{index}"


class TokenStream:
    """An endless, reproducible sequence of (token id, text piece)."""

    def __init__(self, vocab: Vocabulary, seed: str) -> None:
        self._vocab = vocab
        self._rng = random.Random(seed)

    def next(self) -> tuple[int, str]:
        k = self._rng.randrange(len(self._vocab.ids))
        return self._vocab.ids[k], self._vocab.pieces[k]

    def natural_length(self, low: int, high: int) -> int:
        """Where this answer's end-of-sequence token falls."""
        return self._rng.randint(low, high)
