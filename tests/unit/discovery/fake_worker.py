"""A tiny in-process stand-in for an engine: ``/health``, ``/v1/models``, ``/metrics``.

Every answer is settable while it runs, so tests can make a worker fail, recover,
hang or change what it serves.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="1",model_name="m"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
"""

SGLANG_METRICS = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",tp_rank="0"} 7.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m",tp_rank="0"} 4.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m",tp_rank="0"} 0.5
"""


class FakeWorker:
    def __init__(
        self, models: list[str] | None = None, metrics: str = VLLM_METRICS
    ) -> None:
        self.models = list(models if models is not None else ["m"])
        self.health_status = 200
        self.models_status = 200
        self.metrics_status = 200
        self.metrics = metrics
        self.health_delay_s = 0.0
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def worker_id(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeWorker:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        self._stopping.set()  # release handlers held by health_delay_s
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        self.hits["health"] += 1
        if self.health_delay_s:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.health_delay_s)
            except asyncio.TimeoutError:
                pass
        return web.Response(status=self.health_status)

    async def _models(self, request: web.Request) -> web.Response:
        self.hits["models"] += 1
        if self.models_status != 200:
            return web.Response(status=self.models_status)
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits["metrics"] += 1
        return web.Response(
            status=self.metrics_status,
            text=self.metrics,
            content_type="text/plain",
        )


WorkerFactory = Callable[..., Awaitable[FakeWorker]]


@pytest.fixture
async def fake_worker() -> AsyncIterator[WorkerFactory]:
    started: list[FakeWorker] = []

    async def make(**kwargs: object) -> FakeWorker:
        worker = await FakeWorker(**kwargs).start()  # type: ignore[arg-type]
        started.append(worker)
        return worker

    yield make
    for worker in started:
        await worker.stop()


async def eventually(
    condition: Callable[[], bool], *, timeout_s: float = 3.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds, failing the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)
