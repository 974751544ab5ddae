"""Turn a tokenizer setting (``builtin``, a path, or a hub id) into a tokenizer."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from corral.errors import ConfigError
from corral.tokenizer.builtin import BUILTIN_NAME, load_builtin_tokenizer
from corral.tokenizer.model import ModelTokenizer, load_tokenizer_dir

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=32)
def load_tokenizer(spec: str) -> ModelTokenizer:
    """Load a tokenizer once per process.

    ``spec`` is ``builtin``, a folder holding ``tokenizer.json`` (and optionally
    ``tokenizer_config.json``), a ``tokenizer.json`` path, or a Hugging Face hub
    id (``org/name``), which needs the ``huggingface_hub`` package and network
    access or a populated hub cache.
    """
    if spec == BUILTIN_NAME:
        return load_builtin_tokenizer()
    path = Path(spec).expanduser()
    if path.exists():
        return load_tokenizer_dir(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _load_from_hub(spec)
    raise ConfigError(
        f"tokenizer {spec!r}: not 'builtin', not an existing path, not a hub id"
    )


def _load_from_hub(repo_id: str) -> ModelTokenizer:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ConfigError(
            f"tokenizer {repo_id!r} is a hub id; install huggingface_hub to fetch it"
        ) from exc
    try:
        tokenizer_file = Path(hf_hub_download(repo_id, "tokenizer.json"))
    except Exception as exc:
        raise ConfigError(f"cannot fetch tokenizer {repo_id!r}: {exc}") from exc
    try:
        hf_hub_download(repo_id, "tokenizer_config.json")
    except Exception:
        logger.info("%s has no tokenizer_config.json; no chat template", repo_id)
    return load_tokenizer_dir(tokenizer_file.parent, name=repo_id)
