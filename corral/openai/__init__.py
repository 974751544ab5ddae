"""OpenAI-compatible request parsing for routing, SSE reading, ``/v1/models``."""

from corral.openai.models import list_body, model_body, models_path_id
from corral.openai.requests import (
    IMAGE_PLACEHOLDER,
    MODEL_OPTIONAL,
    Endpoint,
    ParsedRequest,
    decode_json,
    endpoint_for,
    parse_request,
)
from corral.openai.sse import SSEEvent, SSEParser, Usage, body_usage, event_usage

__all__ = [
    "IMAGE_PLACEHOLDER",
    "MODEL_OPTIONAL",
    "Endpoint",
    "ParsedRequest",
    "SSEEvent",
    "SSEParser",
    "Usage",
    "body_usage",
    "decode_json",
    "endpoint_for",
    "event_usage",
    "list_body",
    "model_body",
    "models_path_id",
    "parse_request",
]
