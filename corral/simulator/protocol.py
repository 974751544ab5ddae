"""Parsing OpenAI-style requests and shaping answers as vLLM and SGLang do.

Validation raises ``corral.errors`` classes; the server renders them in the
engine's error format. Client mistakes are always 4xx, never 500.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

from corral.errors import InvalidRequest
from corral.simulator.generation import Outcome, SamplingParams

logger = logging.getLogger(__name__)

# Error "type" strings as the engines' OpenAI servers name them.
ERROR_TYPES = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    403: "ForbiddenError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    413: "RequestEntityTooLargeError",
    429: "TooManyRequestsError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The JSON body of an error answer (vLLM's shape, OpenAI's envelope)."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "HTTPException"),
            "param": param,
            "code": status,
        }
    }


def new_id(prefix: str, sep: str = "-") -> str:
    """A random id: ``chatcmpl-<hex>`` for OpenAI objects; the Responses API and
    Anthropic join with ``_`` (``resp_<hex>``, ``msg_<hex>``)."""
    return f"{prefix}{sep}{secrets.token_hex(16)}"


def now() -> int:
    return int(time.time())


def _type_error(name: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"'{name}' must be {expected}", param=name)


def opt_int(body: Mapping[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer")
    if value < minimum:
        raise InvalidRequest(
            f"'{name}' must be at least {minimum}, got {value}", param=name
        )
    return value


def opt_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _type_error(name, "a boolean")
    return value


def check_numbers(body: Mapping[str, Any], *names: str) -> None:
    """Sampling knobs the simulator ignores still have to be numbers."""
    for name in names:
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise _type_error(name, "a number")


def stop_strings(value: Any, name: str = "stop") -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise _type_error(name, "a string or a list of strings")


def sampling_params(body: Mapping[str, Any], *, chat: bool) -> SamplingParams:
    check_numbers(
        body,
        "temperature",
        "top_p",
        "top_k",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "min_p",
    )
    max_tokens = opt_int(body, "max_tokens", minimum=1)
    if chat:
        newer = opt_int(body, "max_completion_tokens", minimum=1)
        max_tokens = newer if newer is not None else max_tokens
    return SamplingParams(
        n=opt_int(body, "n", minimum=1) or 1,
        max_tokens=max_tokens,
        stop=stop_strings(body.get("stop")),
        seed=opt_int(body, "seed", minimum=-(2**63)),
        ignore_eos=opt_bool(body, "ignore_eos"),
    )


def include_usage(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _type_error("stream_options", "an object")
    if not stream:
        raise InvalidRequest(
            "stream_options can only be set when stream is true", param="stream_options"
        )
    return opt_bool(options, "include_usage")


def flatten_content(content: Any, where: str) -> str:
    """Message content as text: a list of parts becomes its text parts joined
    by newlines, as vLLM does for text-only models."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise _type_error(f"{where}.text", "a string")
                texts.append(text)
            elif not isinstance(part, dict):
                raise _type_error(where, "a string or a list of content parts")
        return "\n".join(texts)
    raise _type_error(where, "a string or a list of content parts")


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("'messages' is a required property", param="messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _type_error(f"messages[{i}]", "an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidRequest(
                f"messages[{i}].role must be a string", param=f"messages[{i}].role"
            )
        flat = dict(message)
        flat["content"] = flatten_content(
            message.get("content"), f"messages[{i}].content"
        )
        out.append(flat)
    return out


def completion_prompts(body: Mapping[str, Any]) -> list[str | list[int]]:
    """The prompts of ``/v1/completions``: text or token ids, one or many."""
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("'prompt' is a required property", param="prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(_is_token(t) for t in prompt):
            return [list(prompt)]
        if all(
            isinstance(p, list) and p and all(_is_token(t) for t in p) for p in prompt
        ):
            return [list(p) for p in prompt]
    raise InvalidRequest(
        "'prompt' must be a string, a list of strings, a list of token ids or a "
        "list of lists of token ids",
        param="prompt",
    )


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def usage(outcome: Outcome) -> dict[str, Any]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens},
    }


def model_card(
    model: str, engine: str, max_model_len: int, created: int
) -> dict[str, Any]:
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": engine,
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
    }
