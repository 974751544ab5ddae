"""What routing needs from a request body, per endpoint, without changing the body.

The body is parsed once with ``json.loads`` and only read: the gateway forwards
the client's bytes to the worker unchanged, so nothing here may reformat or drop
a field. ``parse_request`` returns a ``ParsedRequest`` holding the model name,
the streaming flags and the prompt in the form the tokenizer wants (chat
messages to render, a text, or token ids given by the client).

Endpoints (path without query string):

    /v1/chat/completions   messages (+ tools), rendered through the chat template
    /v1/responses          instructions + input (string or items), as chat
    /v1/messages           Anthropic: system + messages with content blocks, as chat
    /v1/completions        prompt: str | [str] | [int] | [[int]]
    /v1/embeddings         input: same shapes as prompt
    /generate              SGLang: text | input_ids; model optional
    /rerank, /v1/rerank    query + documents; model optional

Any other path is ``Endpoint.OTHER``: a JSON object body with a string ``model``
is routed to that model's pool, anything else (no body, not JSON, no model) is
routed to the default pool when there is one. Envoy's route table, not this
module, decides which paths reach the gateway at all.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from corral.errors import InvalidRequest

IMAGE_PLACEHOLDER = "<image>"
"""Stands in for an image part, so prompts with images keep a stable prefix."""
AUDIO_PLACEHOLDER = "<audio>"
FILE_PLACEHOLDER = "<file>"


class Endpoint(enum.StrEnum):
    CHAT = "chat"
    RESPONSES = "responses"
    MESSAGES = "messages"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    GENERATE = "generate"
    RERANK = "rerank"
    OTHER = "other"


ENDPOINTS: Mapping[str, Endpoint] = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/responses": Endpoint.RESPONSES,
    "/v1/messages": Endpoint.MESSAGES,
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
    "/generate": Endpoint.GENERATE,
    "/rerank": Endpoint.RERANK,
    "/v1/rerank": Endpoint.RERANK,
}

MODEL_OPTIONAL = frozenset({Endpoint.GENERATE, Endpoint.RERANK, Endpoint.OTHER})
"""Endpoints whose body may omit ``model``: they go to the default pool."""


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """The routing view of one request.

    Exactly one prompt form is set for the known endpoints: ``messages`` (chat
    forms, content flattened to text, to render through the chat template),
    ``text`` (to encode with ``add_special_tokens``) or ``token_ids`` (used as
    given). ``routing_text`` is always set for known endpoints: what a policy
    routes on when no tokenizer is available.
    """

    endpoint: Endpoint
    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, Any]] | None = None
    tools: list[Any] | None = None
    text: str | None = None
    token_ids: list[int] | None = None
    add_special_tokens: bool = True
    routing_text: str | None = None


PASSTHROUGH_PATHS = frozenset(
    {
        "/v1/score",
        "/score",
        "/v1/classify",
        "/classify",
        "/pooling",
        "/v1/pooling",
        "/tokenize",
        "/detokenize",
        "/v1/tokenize",
        "/v1/detokenize",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    }
)
"""Engine API paths routed without parsing (the JSON ``model`` picks the pool if
there is one). Any other path is answered 404 by the gateway: engines also serve
operational and debug routes (``/metrics``, LoRA loading, profiling) that
clients must not reach through it. A setting listing extra paths would let a
deployment route endpoints of its own."""


def is_routable(path: str) -> bool:
    """Whether the gateway routes ``path`` to a worker at all."""
    bare = path.split("?", 1)[0]
    return bare in ENDPOINTS or bare in PASSTHROUGH_PATHS


def endpoint_for(path: str) -> Endpoint:
    """The endpoint of a request path (query string ignored)."""
    return ENDPOINTS.get(path.split("?", 1)[0], Endpoint.OTHER)


def decode_json(body: bytes) -> Any:
    """``json.loads`` with a 400 that says where the document broke."""
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"request body is not valid UTF-8 (byte {exc.start})"
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, "
            f"column {exc.colno}, char {exc.pos})"
        ) from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply to parse") from None
    except ValueError as exc:
        # Python refuses integers of more than 4300 digits (int_max_str_digits).
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def parse_request(endpoint: Endpoint, body: bytes) -> ParsedRequest:
    """Parse a request body for routing. Raises ``InvalidRequest`` (400).

    For ``Endpoint.OTHER`` a body that is not a JSON object is not an error: it
    yields a request with no model and no prompt.
    """
    if endpoint is Endpoint.OTHER:
        return _parse_other(body)
    if not body.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    data = decode_json(body)
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {_kind(data)}")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest(
            f"'model' must be a string, got {_kind(model)}", param="model"
        )
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest(
            f"'stream' must be a boolean, got {_kind(stream)}", param="stream"
        )
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest(
            "'stream_options' must be an object", param="stream_options"
        )
    include_usage = bool(options.get("include_usage")) if options else False
    common = {
        "endpoint": endpoint,
        "model": model or None,
        "stream": stream,
        "include_usage": include_usage,
    }
    return _PARSERS[endpoint](data, common)


# -- per endpoint -----------------------------------------------------------------


def _parse_chat(data: dict[str, Any], common: dict[str, Any]) -> ParsedRequest:
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest(
            f"'messages' must be a list, got {_kind(messages)}", param="messages"
        )
    if not messages:
        raise InvalidRequest("'messages' must not be empty", param="messages")
    flat = [_chat_message(m, i) for i, m in enumerate(messages)]
    tools = _tools(data.get("tools"))
    return ParsedRequest(
        messages=flat,
        tools=tools,
        add_special_tokens=False,
        routing_text=_messages_text(flat, tools),
        **common,
    )


def _chat_message(message: Any, index: int) -> dict[str, Any]:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(
            f"{param} must be an object, got {_kind(message)}", param=param
        )
    role = message.get("role")
    if not isinstance(role, str):
        raise InvalidRequest(f"{param}.role must be a string", param=f"{param}.role")
    flat = dict(message)
    flat["content"] = _content_text(message.get("content"), f"{param}.content")
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise InvalidRequest(
            f"{param}.tool_calls must be a list", param=f"{param}.tool_calls"
        )
    return flat


def _content_text(content: Any, param: str) -> str:
    """Text of a message content: a string, or parts (text kept, media as
    placeholders), or null (assistant turns that only call tools)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"{param} must be a string or a list of parts, got {_kind(content)}",
            param=param,
        )
    pieces: list[str] = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            pieces.append(part)
            continue
        if not isinstance(part, dict):
            raise InvalidRequest(
                f"{param}[{i}] must be an object", param=f"{param}[{i}]"
            )
        pieces.append(_part_text(part, f"{param}[{i}]"))
    # vLLM flattens parts for string-content chat templates with newlines; the
    # prompt routed on must be the one the engine caches.
    return "\n".join(pieces)


def _part_text(part: dict[str, Any], param: str) -> str:
    kind = part.get("type")
    text = part.get("text")
    if isinstance(text, str):
        return text
    if kind in ("image_url", "input_image", "image"):
        return IMAGE_PLACEHOLDER
    if kind in ("input_audio", "audio"):
        return AUDIO_PLACEHOLDER
    if kind in ("file", "input_file", "document"):
        return FILE_PLACEHOLDER
    if kind == "tool_use":  # Anthropic: the call as the model wrote it
        return f"{part.get('name', '')}{_compact(part.get('input'))}"
    if kind == "tool_result":
        return _content_text(part.get("content"), f"{param}.content")
    if kind in ("text", "input_text", "output_text"):
        raise InvalidRequest(f"{param}.text must be a string", param=f"{param}.text")
    return ""


def _tools(tools: Any) -> list[Any] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise InvalidRequest(
            f"'tools' must be a list, got {_kind(tools)}", param="tools"
        )
    return tools or None


def _messages_text(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
    # A stable rendering for text-based routing: role, content and tool calls
    # in order, so conversations that share turns share a prefix.
    lines = [_compact(tools)] if tools else []
    for m in messages:
        line = f"{m.get('role')}: {m.get('content') or ''}"
        if m.get("tool_calls"):
            line += " " + _compact(m["tool_calls"])
        lines.append(line)
    return "\n".join(lines)


def _parse_responses(data: dict[str, Any], common: dict[str, Any]) -> ParsedRequest:
    messages: list[dict[str, Any]] = []
    instructions = data.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequest(
                "'instructions' must be a string", param="instructions"
            )
        messages.append({"role": "system", "content": instructions})
    items = data.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for i, item in enumerate(items):
            messages.append(_response_item(item, f"input[{i}]"))
    else:
        raise InvalidRequest(
            f"'input' must be a string or a list of items, got {_kind(items)}",
            param="input",
        )
    tools = _tools(data.get("tools"))
    return ParsedRequest(
        messages=messages,
        tools=tools,
        add_special_tokens=False,
        routing_text=_messages_text(messages, tools),
        **common,
    )


def _response_item(item: Any, param: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{param} must be an object", param=param)
    kind = item.get("type", "message")
    if kind == "message" or "role" in item:
        role = item.get("role")
        if not isinstance(role, str):
            raise InvalidRequest(
                f"{param}.role must be a string", param=f"{param}.role"
            )
        return {"role": role, "content": _content_text(item.get("content"), param)}
    if kind == "function_call":
        text = f"{item.get('name', '')}({item.get('arguments', '')})"
        return {"role": "assistant", "content": text}
    if kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _compact(output)
        return {"role": "tool", "content": text}
    return {"role": "user", "content": _compact(item)}


def _parse_messages(data: dict[str, Any], common: dict[str, Any]) -> ParsedRequest:
    messages: list[dict[str, Any]] = []
    system = data.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _content_text(system, "system")})
    raw = data.get("messages")
    if not isinstance(raw, list):
        raise InvalidRequest(
            f"'messages' must be a list, got {_kind(raw)}", param="messages"
        )
    messages.extend(_chat_message(m, i) for i, m in enumerate(raw))
    if not messages:
        raise InvalidRequest("'messages' must not be empty", param="messages")
    tools = _tools(data.get("tools"))
    return ParsedRequest(
        messages=messages,
        tools=tools,
        add_special_tokens=False,
        routing_text=_messages_text(messages, tools),
        **common,
    )


def _parse_prompt_field(
    data: dict[str, Any], common: dict[str, Any], name: str
) -> ParsedRequest:
    text, ids = _prompt(data.get(name), name)
    return ParsedRequest(
        text=text,
        token_ids=ids,
        routing_text=text if ids is None else None,
        add_special_tokens=True,
        **common,
    )


def _prompt(value: Any, param: str) -> tuple[str | None, list[int] | None]:
    """A prompt in any OpenAI shape: str, [str], [int], [[int]].

    A batch is routed on its first prompt: the worker runs the whole batch, and
    the first prompt carries the prefix the batch most likely shares.
    """
    if isinstance(value, str):
        return value, None
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, str) and all(isinstance(v, str) for v in value):
            return first, None
        if _is_ids(value):
            return None, value
        if isinstance(first, list) and all(_is_ids(v) for v in value):
            return None, first
    raise InvalidRequest(
        f"'{param}' must be a string, a list of strings, a list of token ids or a "
        f"list of token-id lists, got {_kind(value)}",
        param=param,
    )


def _is_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        )
    )


def _parse_generate(data: dict[str, Any], common: dict[str, Any]) -> ParsedRequest:
    if data.get("input_ids") is not None:
        _, ids = _prompt(data["input_ids"], "input_ids")
        if ids is None:
            raise InvalidRequest("'input_ids' must be token ids", param="input_ids")
        return ParsedRequest(token_ids=ids, **common)
    if data.get("text") is None:
        raise InvalidRequest("'text' or 'input_ids' is required", param="text")
    text, _ = _prompt(data["text"], "text")
    if text is None:
        raise InvalidRequest(
            "'text' must be a string or a list of strings", param="text"
        )
    return ParsedRequest(text=text, routing_text=text, **common)


def _parse_rerank(data: dict[str, Any], common: dict[str, Any]) -> ParsedRequest:
    query = data.get("query")
    if not isinstance(query, str):
        raise InvalidRequest(
            f"'query' must be a string, got {_kind(query)}", param="query"
        )
    documents = data.get("documents")
    if not isinstance(documents, list):
        raise InvalidRequest(
            f"'documents' must be a list, got {_kind(documents)}", param="documents"
        )
    texts: list[str] = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            texts.append(doc)
        elif isinstance(doc, dict) and isinstance(doc.get("text"), str):
            texts.append(doc["text"])
        else:
            raise InvalidRequest(
                f"documents[{i}] must be a string or an object with 'text'",
                param=f"documents[{i}]",
            )
    text = "\n".join([query, *texts])
    return ParsedRequest(text=text, routing_text=text, **common)


def _parse_other(body: bytes) -> ParsedRequest:
    # Unknown paths never fail here: the worker judges its own API.
    model: str | None = None
    if body.lstrip()[:1] == b"{":
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            model = data["model"] or None
    return ParsedRequest(endpoint=Endpoint.OTHER, model=model)


_PARSERS = {
    Endpoint.CHAT: _parse_chat,
    Endpoint.RESPONSES: _parse_responses,
    Endpoint.MESSAGES: _parse_messages,
    Endpoint.COMPLETIONS: lambda d, c: _parse_prompt_field(d, c, "prompt"),
    Endpoint.EMBEDDINGS: lambda d, c: _parse_prompt_field(d, c, "input"),
    Endpoint.GENERATE: _parse_generate,
    Endpoint.RERANK: _parse_rerank,
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
