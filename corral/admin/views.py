"""JSON shapes of the admin API: request bodies in, worker records out."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from corral.config.settings import StaticWorker
from corral.errors import InvalidRequest
from corral.pool import Worker, WorkerLoad


def parse_worker_body(raw: bytes) -> StaticWorker:
    """Validate a ``POST /workers`` body; raise ``InvalidRequest`` naming the field.

    Accepted keys: ``url`` (required), ``model``, ``models``, ``role``,
    ``labels``, ``bootstrap_port``. Unknown keys are refused, so a typo is an
    error instead of a silently ignored setting.
    """
    try:
        document = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("request body must be a JSON object with a url")
    try:
        return StaticWorker.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        where = f"{field}: " if field else ""
        raise InvalidRequest(f"{where}{first['msg']}", param=field) from None


def worker_location(worker_id: str) -> str:
    # Ids hold ':' and, for IPv6, brackets; encode them so the path is one segment.
    return "/workers/" + quote(worker_id, safe="")


def worker_view(
    worker: Worker, load: WorkerLoad, now: float | None = None
) -> dict[str, Any]:
    """One worker as the API shows it, with the gateway's and the engine's load."""
    now = time.monotonic() if now is None else now
    age = now - load.engine_updated_at if load.engine_updated_at > 0 else None
    return {
        "id": worker.id,
        "url": worker.url,
        "address": worker.address,
        "models": list(worker.models),
        "role": worker.role.value,
        "state": worker.state.value,
        "labels": dict(worker.labels),
        "source": worker.source,
        "bootstrap_port": worker.bootstrap_port,
        "location": worker_location(worker.id),
        "load": {
            "requests": load.requests,
            "tokens": load.tokens,
            "processed": load.processed,
            "engine_running": load.engine_running,
            "engine_waiting": load.engine_waiting,
            "engine_kv_usage": load.engine_kv_usage,
            "engine_age_s": None if age is None else round(age, 3),
        },
    }
