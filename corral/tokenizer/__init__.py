"""Tokenizers (builtin, local files, hub ids) and their chat templates."""

from corral.tokenizer.builtin import BUILTIN_NAME, load_builtin_tokenizer
from corral.tokenizer.loader import load_tokenizer
from corral.tokenizer.model import ChatTemplateError, ModelTokenizer

__all__ = [
    "BUILTIN_NAME",
    "ChatTemplateError",
    "ModelTokenizer",
    "load_builtin_tokenizer",
    "load_tokenizer",
]
