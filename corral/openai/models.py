"""The OpenAI ``/v1/models`` answers, built from the pools the gateway serves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

OWNED_BY = "corral"
MODELS_PATH = "/v1/models"


def models_path_id(path: str) -> str | None:
    """For ``/v1/models`` return ``""``; for ``/v1/models/{id}`` the id (model
    ids may hold slashes, so everything after the prefix is the id); for any
    other path ``None``."""
    path = path.split("?", 1)[0].rstrip("/")
    if path == MODELS_PATH:
        return ""
    prefix = MODELS_PATH + "/"
    if path.startswith(prefix):
        return unquote(path[len(prefix) :])
    return None


def model_object(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": OWNED_BY}


def list_body(models: Sequence[str], created: int) -> bytes:
    """``{"object": "list", "data": [...]}``; ``created`` is a Unix time."""
    data = [model_object(m, created) for m in models]
    return _dump({"object": "list", "data": data})


def model_body(model: str, created: int) -> bytes:
    return _dump(model_object(model, created))


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
