"""A small byte-level BPE tokenizer trained by Corral itself, for offline use.

The local stack must work on a fresh machine with no model files and no network.
This tokenizer is trained deterministically from text every CPython ships (the
``pydoc_data`` help topics), cached on disk by content hash, and carries a
ChatML chat template. Gateway and simulated workers load the same one, so their
token ids agree. It is not a real model's vocabulary; point ``tokenizer:`` at a
model's ``tokenizer.json`` for real engines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from corral.tokenizer.model import ModelTokenizer

logger = logging.getLogger(__name__)

BUILTIN_NAME = "builtin"
VOCAB_SIZE = 8192
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "corral"


def _train(corpus: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def load_builtin_tokenizer(cache_dir: Path | None = None) -> ModelTokenizer:
    """The project's own tokenizer: trained once, then read from the cache."""
    corpus = _corpus()
    digest = hashlib.sha256()
    digest.update(f"v1 {VOCAB_SIZE} {SPECIAL_TOKENS}".encode())
    for text in corpus:
        digest.update(text.encode())
    folder = cache_dir or _cache_dir()
    path = folder / f"builtin-bpe-{digest.hexdigest()[:16]}.json"
    tokenizer: Tokenizer | None = None
    if path.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception:
            logger.warning("cached tokenizer %s unreadable; training again", path)
    if tokenizer is None:
        tokenizer = _train(corpus)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Write then rename, so concurrent processes never read half a file.
            with tempfile.NamedTemporaryFile(
                "w", dir=folder, delete=False, suffix=".tmp", encoding="utf-8"
            ) as handle:
                handle.write(tokenizer.to_str())
            os.replace(handle.name, path)
        except OSError as exc:
            logger.warning("cannot cache the builtin tokenizer at %s: %s", path, exc)
    return ModelTokenizer(
        tokenizer,
        name=BUILTIN_NAME,
        chat_template=CHAT_TEMPLATE,
        special_tokens={"eos_token": "<|im_end|>", "bos_token": "<|endoftext|>"},
    )
