"""HTTP probes of one worker: liveness (``/health``) and served models (``/v1/models``).

A worker takes traffic only once both answer: ``/health`` with a 2xx status, and
``/v1/models`` with the OpenAI list shape (``{"data": [{"id": ...}, ...]}``, see
https://platform.openai.com/docs/api-reference/models/list) naming a model the
worker was declared for, or, for a worker declared without models, naming any.
vLLM and SGLang both serve these two routes on their API port.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp

from corral.pool import Worker

logger = logging.getLogger(__name__)

DEFAULT_HEALTH_PATH = "/health"
MODELS_PATH = "/v1/models"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe. ``models`` is set by a registration probe only."""

    ok: bool
    reason: str = ""
    models: tuple[str, ...] = ()


def _timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=timeout_s)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def probe_health(
    session: aiohttp.ClientSession,
    worker: Worker,
    *,
    timeout_s: float,
    path: str = DEFAULT_HEALTH_PATH,
) -> ProbeResult:
    """``GET {url}{path}``; ok when the status is 2xx within ``timeout_s``."""
    try:
        async with session.get(
            worker.dial_url + path, timeout=_timeout(timeout_s), allow_redirects=False
        ) as response:
            await response.read()
            if 200 <= response.status < 300:
                return ProbeResult(True)
            return ProbeResult(False, f"{path} answered {response.status}")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return ProbeResult(False, f"{path}: {_describe(exc)}")


async def fetch_models(
    session: aiohttp.ClientSession, worker: Worker, *, timeout_s: float
) -> tuple[str, ...]:
    """The model ids a worker's ``/v1/models`` names, in its order.

    Raises ``ValueError`` naming the problem when the answer is not a 2xx
    OpenAI model list, and the aiohttp or timeout error when the call fails.
    """
    async with session.get(
        worker.dial_url + MODELS_PATH,
        timeout=_timeout(timeout_s),
        allow_redirects=False,
    ) as response:
        if not 200 <= response.status < 300:
            await response.read()
            raise ValueError(f"{MODELS_PATH} answered {response.status}")
        try:
            body = await response.json(content_type=None)
        except ValueError as exc:
            raise ValueError(f"{MODELS_PATH} did not answer JSON") from exc
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ValueError(f'{MODELS_PATH} answer has no "data" list')
    ids = (entry.get("id") for entry in data if isinstance(entry, dict))
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, str) and i))


async def probe_registration(
    session: aiohttp.ClientSession,
    worker: Worker,
    *,
    timeout_s: float,
    path: str = DEFAULT_HEALTH_PATH,
) -> ProbeResult:
    """Health, then models; ok when the worker may take traffic.

    On success ``models`` is what the registry should record: the declared
    models when the worker has some (it serves at least one of them), otherwise
    every model ``/v1/models`` named.
    """
    health = await probe_health(session, worker, timeout_s=timeout_s, path=path)
    if not health.ok:
        return health
    try:
        served = await fetch_models(session, worker, timeout_s=timeout_s)
    except ValueError as exc:
        return ProbeResult(False, str(exc))
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return ProbeResult(False, f"{MODELS_PATH}: {_describe(exc)}")
    if not served:
        return ProbeResult(False, f"{MODELS_PATH} names no model")
    if worker.models:
        if not set(worker.models) & set(served):
            return ProbeResult(
                False,
                f"{MODELS_PATH} names {', '.join(served)}, none of the declared "
                f"{', '.join(worker.models)}",
            )
        return ProbeResult(True, models=worker.models)
    return ProbeResult(True, models=served)
