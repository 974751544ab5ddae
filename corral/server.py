"""The composition root of ``corral serve``: the only module that knows every part.

Start-up is a visible sequence: registry, tokenizers and policies, one gRPC server
(ext_proc + ADS), the admin/metrics HTTP server, then the background tasks
(discovery sources, health checks, engine-load polling). Shutdown runs it backwards:
stop taking new ext_proc streams, give running ones a grace period, cancel the
background tasks, close the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from corral.config import Settings
from corral.pool import WorkerRegistry, WorkerState

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
WARMUP_LIMIT_S = 5.0
"""Longest wait for the first probe of every configured worker before the gRPC
port opens."""
HEALTH_SERVICES = (
    "",
    "envoy.service.ext_proc.v3.ExternalProcessor",
    "envoy.service.discovery.v3.AggregatedDiscoveryService",
)
"""Names the gRPC health service answers for: the server, and each service."""


class ControlPlane:
    """Every long-lived part of one ``corral serve`` process, started and stopped
    together. ``start()`` returns once all servers listen; ``stop()`` is safe to
    call more than once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = WorkerRegistry(m.name for m in settings.models)
        self.grpc_port: int | None = None
        self.admin_port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._admin: Any = None
        self._extproc: Any = None
        self._ads: Any = None
        self._health: health.aio.HealthServicer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    def __repr__(self) -> str:
        return (
            f"<ControlPlane grpc={self.grpc_port} admin={self.admin_port} "
            f"tasks={len(self._tasks)} {self.registry!r}>"
        )

    async def start(self) -> None:
        from corral.admin import build_admin_app, start_admin
        from corral.extproc import ExtProcServer, grpc_server_options
        from corral.resilience import build_admission, build_breaker
        from corral.xds import AdsServer

        settings = self.settings
        breaker = build_breaker(settings, self.registry)
        admission = build_admission(settings, self.registry)
        self._extproc = ExtProcServer(
            self.registry, settings, breaker=breaker, admission=admission
        )
        await self._extproc.start()
        self._ads = AdsServer(self.registry, settings)

        self._grpc = grpc.aio.server(options=grpc_server_options(settings))
        self._extproc.add_to_server(self._grpc)
        self._ads.add_to_server(self._grpc)
        # The standard gRPC health service, which meshes and Envoy's gRPC health
        # checks query: SERVING once everything listens, NOT_SERVING on the way out.
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        try:
            self.grpc_port = self._grpc.add_insecure_port(str(settings.grpc))
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {settings.grpc} for gRPC: {exc}") from None
        if not self.grpc_port:
            raise OSError(f"cannot listen on {settings.grpc} for gRPC (in use?)")

        app = build_admin_app(self.registry, settings)
        self._admin = await start_admin(app, settings.admin.host, settings.admin.port)
        self.admin_port = self._admin.port

        for name, task in _background_tasks(settings, self.registry):
            self._spawn(task, name)
        # Envoy's requests reach the picker only once the configured workers
        # have had their first probe: a control plane that restarts under load
        # would otherwise answer 503 "no healthy worker" for the milliseconds
        # before its registry fills, where Envoy, failing open while the port
        # is closed, still routes on the endpoints it already has.
        await self._first_probes(WARMUP_LIMIT_S)
        await self._grpc.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        logger.info(
            "corral serving: grpc %s:%d (ext_proc, ADS), admin http://%s:%d",
            settings.grpc.host,
            self.grpc_port,
            settings.admin.host,
            self.admin_port,
        )

    async def _first_probes(self, limit_s: float) -> None:
        """Wait until no worker is PENDING (each has been probed once), at most
        ``limit_s``; sources get a moment to register their workers first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        await asyncio.sleep(0.05)
        while loop.time() < deadline:
            workers = self.registry.snapshot().workers.values()
            if not any(w.state is WorkerState.PENDING for w in workers):
                return
            await asyncio.sleep(0.02)
        logger.info("starting before every worker was probed (%.0fs passed)", limit_s)

    async def _set_health(self, status: int) -> None:
        if self._health is None:
            return
        for service in HEALTH_SERVICES:
            await self._health.set(service, status)

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    @staticmethod
    def _task_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "background task %s stopped", task.get_name(), exc_info=task.exception()
            )

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        if self._stopped:
            return
        self._stopped = True
        logger.info("corral stopping (grace %.1fs)", grace_s)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._ads is not None:
            await self._ads.close()
        if self._grpc is not None:
            # New streams are refused at once; running ones get the grace period.
            await self._grpc.stop(grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._extproc is not None:
            await self._extproc.close()
        if self._admin is not None:
            await self._admin.stop()
        logger.info("corral stopped")


def _background_tasks(
    settings: Settings, registry: WorkerRegistry
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """The discovery sources the configuration asks for, health checks and engine
    load polling, each as a coroutine that runs until cancelled."""
    from corral.discovery import (
        EngineLoadPoller,
        FileSource,
        HealthChecker,
        StaticSource,
    )

    drain_s = settings.health_check.drain_timeout_s
    tasks: list[tuple[str, Coroutine[Any, Any, None]]] = [
        ("health-checks", HealthChecker(registry, settings.health_check).run()),
        ("engine-load", EngineLoadPoller(registry, settings.load_metrics).run()),
    ]
    if settings.workers:
        source = StaticSource(registry, settings.workers, drain_timeout_s=drain_s)
        tasks.append((source.name, source.run()))
    if settings.discovery.file is not None:
        watched = FileSource(registry, settings.discovery.file, drain_timeout_s=drain_s)
        tasks.append((watched.name, watched.run()))
    if settings.discovery.kubernetes is not None:
        from corral.discovery.kubernetes import build_kubernetes_source

        pods = build_kubernetes_source(settings, registry)
        if pods is not None:
            tasks.append((pods.name, pods.run()))
    return tasks


async def serve(settings: Settings) -> None:
    """Run the control plane until SIGINT or SIGTERM."""
    plane = ControlPlane(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plane.start()
        await stop.wait()
    finally:
        await plane.stop()


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
