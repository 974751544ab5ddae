"""Shared pieces of the xDS end-to-end tests: a control plane, Envoy, workers."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from corral.config.settings import Settings, parse_settings
from corral.pool import WorkerRegistry, WorkerState, make_worker
from corral.xds import AdsServer
from corral.xds.bootstrap import render_bootstrap
from corral.xds.envoy_process import EnvoyProcess
from tests.conftest import free_port

MODEL = "tiny"


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str
) -> float:
    """Poll ``check`` until true; returns the seconds it took, fails at the deadline."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.02)


class Worker:
    """A tiny upstream: ``/id`` answers its name, ``/sse`` streams numbered events."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/id", self._id)
        app.router.add_get("/sse", self._sse)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _id(self, request: web.Request) -> web.Response:
        return web.Response(text=self.name)

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        count = int(request.query.get("n", "10"))
        gap = float(request.query.get("gap", "0.05"))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(count):
            await response.write(f"data: {self.name} {i}\n\n".encode())
            await asyncio.sleep(gap)
        await response.write(b"data: [DONE]\n\n")
        return response


class ControlPlane:
    """A grpc.aio server on 127.0.0.1 hosting one ``AdsServer``."""

    def __init__(self, registry: WorkerRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.ads: AdsServer | None = None
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server()
        self.ads = AdsServer(self.registry, self.settings)
        self.ads.add_to_server(self.server)
        self.server.add_insecure_port(str(self.settings.grpc))
        await self.server.start()

    async def stop(self) -> None:
        if self.ads is not None:
            await self.ads.close()
        if self.server is not None:
            await self.server.stop(0)


def make_settings(*, delta: bool) -> Settings:
    return parse_settings({
        "models": [{"name": MODEL}],
        "grpc": {"port": free_port()},
        "envoy": {
            "listen": {"port": free_port()},
            "admin": {"port": free_port()},
            "failure_mode_allow": True,
            "ads_delta": delta,
        },
    })


def pinning_bootstrap(settings: Settings) -> dict[str, Any]:
    """The real bootstrap minus the strip filter, so tests can pin a worker.

    Nothing serves ext_proc here; ``failure_mode_allow`` lets requests through
    and the header the test sends plays the picker's part.
    """
    bootstrap = copy.deepcopy(render_bootstrap(settings))
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"][0]["typed_config"]
    hcm["http_filters"] = [
        f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.header_mutation"
    ]
    return bootstrap


async def add_ready_worker(registry: WorkerRegistry, worker: Worker) -> str:
    added = registry.upsert(
        make_worker(f"http://127.0.0.1:{worker.port}", models=(MODEL,))
    )
    registry.set_state(added.id, WorkerState.READY)
    return added.id


class Stack:
    def __init__(self, tmp: Path, *, delta: bool) -> None:
        self.delta = delta
        self.settings = make_settings(delta=delta)
        self.registry = WorkerRegistry([MODEL])
        self.control = ControlPlane(self.registry, self.settings)
        self.envoy = EnvoyProcess(pinning_bootstrap(self.settings), tmp)
        self.base_url = f"http://{self.settings.envoy.listen}"

    async def admin(self, path: str) -> str:
        return await asyncio.to_thread(self.envoy.admin_get, path)

    async def stat(self, name: str) -> int | None:
        return await asyncio.to_thread(self.envoy.stat, name)

    async def cluster_hosts(self) -> set[str]:
        """``ip:port`` of every host Envoy's pool cluster has now."""
        text = await self.admin("/clusters")
        prefix = "corral_pool_" + MODEL + "::"
        hosts = set()
        for line in text.splitlines():
            if line.startswith(prefix) and "::cx_active::" in line:
                hosts.add(line[len(prefix):].split("::", 1)[0])
        return hosts
