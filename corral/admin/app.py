"""The admin HTTP API: worker registration and removal, metrics, liveness, readiness.

Routes (``{id}`` is a worker id, URL-encoded: ids hold ':' and IPv6 brackets):

    POST   /workers        add a worker by URL, source "admin"; 202, probed in the
                           background; 200 with the existing record if the URL is
                           already registered
    GET    /workers        every worker with state and load (``?model=`` filters)
    GET    /workers/{id}   one worker
    DELETE /workers/{id}   202; drains, then removes
    GET    /metrics        Prometheus text exposition
    GET    /healthz        200 while the process runs
    GET    /readyz         200 with at least one READY worker, else 503

When ``settings.admin_token`` is set the ``/workers`` routes need
``Authorization: Bearer <token>`` (RFC 6750 section 2.1); the other three stay open
for probes and scrapers. Every error is OpenAI-style JSON from ``corral.errors``,
and a refused call changes nothing.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from corral.admin.views import parse_worker_body, worker_location, worker_view
from corral.config.settings import Settings
from corral.discovery.base import worker_from_spec
from corral.discovery.drain import cancel_drain, start_drain
from corral.errors import GatewayError, NotFound, ServiceUnavailable, Unauthorized
from corral.observability.metrics import exposition
from corral.pool import WorkerRegistry, WorkerState

logger = logging.getLogger(__name__)

ADMIN_SOURCE = "admin"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Readiness = Callable[[], "str | None"]
"""Extra readiness condition: returns why the gateway is not ready, or None."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REGISTRY: web.AppKey[WorkerRegistry] = web.AppKey("registry", WorkerRegistry)
_SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
_READINESS: web.AppKey[Readiness | None] = web.AppKey("readiness")
_PROTECTED_PREFIX = "/workers"


def build_admin_app(
    registry: WorkerRegistry,
    settings: Settings,
    *,
    readiness: Readiness | None = None,
) -> web.Application:
    """The admin application; serve it with ``start_admin``."""
    app = web.Application(middlewares=[_error_middleware, _auth_middleware])
    app[_REGISTRY] = registry
    app[_SETTINGS] = settings
    app[_READINESS] = readiness
    app.router.add_post("/workers", _add_worker)
    app.router.add_get("/workers", _list_workers)
    app.router.add_get("/workers/{worker_id}", _get_worker)
    app.router.add_delete("/workers/{worker_id}", _delete_worker)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


class AdminServer:
    """A running admin API; ``port`` is the bound one (useful with port 0)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    def __repr__(self) -> str:
        return f"<AdminServer {self.host}:{self.port}>"

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_admin(app: web.Application, host: str, port: int) -> AdminServer:
    """Serve ``app`` on ``host:port`` (port 0 picks a free one)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    logger.info("admin API listening on %s:%d", host, bound)
    return AdminServer(runner, host, bound)


# -- middlewares ----------------------------------------------------------------


def _error_response(exc: GatewayError, status: int | None = None) -> web.Response:
    headers = exc.headers()
    if isinstance(exc, Unauthorized):
        headers["www-authenticate"] = 'Bearer realm="corral-admin"'
    return web.Response(status=status or exc.status, body=exc.body(), headers=headers)


@web.middleware
async def _error_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """The one translation point from exceptions to HTTP answers."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (unknown route, wrong method, body too large).
        error = NotFound(exc.reason) if exc.status == 404 else GatewayError(exc.reason)
        if exc.status != 404:
            error.error_type, error.code = "invalid_request_error", None
        return _error_response(error, exc.status)
    except Exception:
        logger.exception("admin API %s %s failed", request.method, request.path)
        return _error_response(GatewayError("internal error"))


@web.middleware
async def _auth_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    token = request.app[_SETTINGS].admin_token
    if token and request.path.startswith(_PROTECTED_PREFIX):
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthorized("missing bearer token in the Authorization header")
        # Constant-time comparison: the time taken must not reveal how much of
        # the token matched.
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("invalid bearer token")
    return await handler(request)


# -- worker routes --------------------------------------------------------------


async def _add_worker(request: web.Request) -> web.Response:
    registry = request.app[_REGISTRY]
    spec = parse_worker_body(await request.read())
    worker = worker_from_spec(spec, ADMIN_SOURCE)
    existing = registry.get(worker.id)
    if existing is not None and existing.state is not WorkerState.DRAINING:
        return web.json_response(
            {
                "status": "exists",
                "worker_id": existing.id,
                "url": existing.url,
                "location": worker_location(existing.id),
                "worker": worker_view(existing, registry.load(existing.id)),
            },
            status=200,
        )
    if existing is not None:
        # Added back while draining: stop the drain and start over from PENDING.
        cancel_drain(registry, existing.id)
        registry.remove(existing.id)
    registry.upsert(worker)
    location = worker_location(worker.id)
    return web.json_response(
        {
            "status": "accepted",
            "worker_id": worker.id,
            "url": worker.url,
            "location": location,
        },
        status=202,
        headers={"Location": location},
    )


async def _list_workers(request: web.Request) -> web.Response:
    registry = request.app[_REGISTRY]
    model = request.query.get("model")
    workers = [
        worker_view(w, registry.load(w.id))
        for _, w in sorted(registry.snapshot().workers.items())
        if model is None or model in w.models
    ]
    return web.json_response({"workers": workers, "total": len(workers)})


def _lookup_id(request: web.Request) -> str:
    worker_id = request.match_info["worker_id"]
    if request.app[_REGISTRY].get(worker_id) is None:
        raise NotFound(f"no worker with id {worker_id!r}", param="id")
    return worker_id


async def _get_worker(request: web.Request) -> web.Response:
    registry = request.app[_REGISTRY]
    worker_id = _lookup_id(request)
    worker = registry.get(worker_id)
    assert worker is not None
    return web.json_response(worker_view(worker, registry.load(worker_id)))


async def _delete_worker(request: web.Request) -> web.Response:
    registry = request.app[_REGISTRY]
    worker_id = _lookup_id(request)
    timeout_s = request.app[_SETTINGS].health_check.drain_timeout_s
    start_drain(registry, worker_id, timeout_s)
    logger.info("worker %s: removal requested through the admin API", worker_id)
    return web.json_response(
        {
            "status": "draining",
            "worker_id": worker_id,
            "location": worker_location(worker_id),
            "drain_timeout_s": timeout_s,
        },
        status=202,
    )


# -- open routes ----------------------------------------------------------------


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE}
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    workers = request.app[_REGISTRY].snapshot().workers.values()
    ready = sum(1 for w in workers if w.ready)
    if ready == 0:
        raise ServiceUnavailable(
            f"no READY worker ({len(workers)} registered)", code="no_ready_worker"
        )
    check = request.app[_READINESS]
    reason = check() if check is not None else None
    if reason:
        raise ServiceUnavailable(reason, code="not_ready")
    return web.json_response(
        {"status": "ready", "ready_workers": ready, "total_workers": len(workers)}
    )
