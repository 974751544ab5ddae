"""A model's tokenizer with its chat template, rendered as ``transformers`` does."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from corral.errors import ConfigError, InvalidRequest

logger = logging.getLogger(__name__)


_RELEASE_GIL_CHARS = 8 * 1024
"""Texts this long are encoded through the GIL-releasing batch call."""


def raise_if_not_unicode(text: str) -> None:
    """Raise ``InvalidRequest`` if ``text`` holds lone surrogates (JSON escapes
    can carry them; the Rust tokenizer, like any engine, refuses them with a
    ``TypeError``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"text is not valid Unicode (lone surrogate at {exc.start})"
        ) from None


class ChatTemplateError(InvalidRequest):
    code = "chat_template_error"


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    # transformers renders tojson with ensure_ascii=False and keeps key order.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    # The same settings transformers uses for chat templates: blocks trimmed,
    # loop controls enabled, a sandbox, and its helper callables.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _special_token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class ModelTokenizer:
    """Encodes text to token ids and renders chat messages to a prompt.

    Thread-safe for ``encode`` and ``render_chat`` (the Rust tokenizer releases the
    GIL while encoding, so long prompts may be encoded in a worker thread).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        name: str,
        chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._tokenizer = tokenizer
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self._template = (
            _environment().from_string(chat_template) if chat_template else None
        )
        self._special_ids = {
            t.content
            for t in tokenizer.get_added_tokens_decoder().values()
            if t.special
        }

    def __repr__(self) -> str:
        return f"<ModelTokenizer {self.name} vocab={self.vocab_size}>"

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size())

    @property
    def special_token_texts(self) -> frozenset[str]:
        return frozenset(self._special_ids)

    @property
    def raw(self) -> Tokenizer:
        return self._tokenizer

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. Raises ``InvalidRequest`` for text that is not
        valid Unicode (lone surrogates, which JSON escapes can carry)."""
        try:
            return self._encode(text, add_special_tokens)
        except TypeError:
            raise_if_not_unicode(text)
            raise

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        if len(text) >= _RELEASE_GIL_CHARS:
            # ``Tokenizer.encode`` holds the GIL for its whole run; the batch
            # form releases it, so other threads (the event loop) keep going.
            batch = self._tokenizer.encode_batch(
                [text], add_special_tokens=add_special_tokens
            )
            return list(batch[0].ids)
        return list(
            self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        )

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(
            self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        )

    def id_to_token(self, token_id: int) -> str | None:
        token = self._tokenizer.id_to_token(token_id)
        return None if token is None else str(token)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """Render messages through the chat template into the prompt text.

        Without a template the messages' text is joined with newlines, which is
        what routing needs (stable prefixes), not what any engine would do.
        Raises ``ChatTemplateError`` when the template rejects the messages.
        """
        if self._template is None:
            return "\n".join(
                f"{m.get('role', '')}: {m.get('content') or ''}" for m in messages
            ) + ("\nassistant:" if add_generation_prompt else "")
        context: dict[str, Any] = dict(extra or {})
        context.update(self.special_tokens)
        context.update(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            tools=list(tools) if tools else None,
        )
        try:
            return str(self._template.render(**context))
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(
                f"chat template rejected the messages: {exc}"
            ) from exc
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ChatTemplateError(
                f"messages do not fit the model's chat template: {exc}"
            ) from exc


def load_tokenizer_dir(path: Path, *, name: str | None = None) -> ModelTokenizer:
    """Load ``tokenizer.json`` (+ ``tokenizer_config.json`` if present) from a
    folder, or a single ``tokenizer.json`` file."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    tokenizer_file = folder / "tokenizer.json" if path.is_dir() else path
    if not tokenizer_file.is_file():
        raise ConfigError(f"no tokenizer.json at {tokenizer_file}")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:
        raise ConfigError(f"cannot load tokenizer {tokenizer_file}: {exc}") from exc
    config: dict[str, Any] = {}
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {config_file}: {exc}") from exc
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: use "default"
        named = {
            t.get("name"): t.get("template") for t in template if isinstance(t, dict)
        }
        template = named.get("default") or next(iter(named.values()), None)
    jinja_file = folder / "chat_template.jinja"
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    specials = {
        key: text
        for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        if (text := _special_token_text(config.get(key))) is not None
    }
    return ModelTokenizer(
        tokenizer,
        name=name or folder.name,
        chat_template=template if isinstance(template, str) else None,
        special_tokens=specials,
    )
