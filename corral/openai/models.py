"""The OpenAI ``/v1/models`` answers, built from the pools the gateway serves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from corral.errors import ModelNotFound

OWNED_BY = "corral"
MODELS_PATH = "/v1/models"


def model_object(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": OWNED_BY}


def models_body(path: str, models: Sequence[str], created: int) -> bytes | None:
    """The JSON answer for ``GET /v1/models`` or ``GET /v1/models/{id}``.

    Returns ``None`` when ``path`` is neither; raises ``ModelNotFound`` for an
    id that is not served. ``created`` is a Unix time (the gateway's start).
    """
    path = path.split("?", 1)[0].rstrip("/")
    if path == MODELS_PATH:
        data = [model_object(m, created) for m in models]
        return _dump({"object": "list", "data": data})
    prefix = MODELS_PATH + "/"
    if not path.startswith(prefix):
        return None
    # Model ids may hold slashes (org/name); everything after the prefix is the id.
    model = unquote(path[len(prefix):])
    if model not in models:
        raise ModelNotFound(model)
    return _dump(model_object(model, created))


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
