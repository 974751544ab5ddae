"""Starting simulated workers in-process for the simulator's integration tests."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import openai

from corral.simulator import SimConfig, SimWorker

FAST = 0.05  # time scale for tests: 20x faster than the simulated engine

_open_clients: list[openai.AsyncOpenAI] = []


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[SimWorker]:
    overrides.setdefault("time_scale", FAST)
    config = SimConfig(port=0, **overrides)
    worker = SimWorker(config)
    await worker.start()
    try:
        yield worker
    finally:
        while _open_clients:
            await _open_clients.pop().close()
        await worker.stop()


def client(worker: SimWorker, **kwargs: Any) -> openai.AsyncOpenAI:
    """An official client for ``worker``, closed when ``running`` exits."""
    api = openai.AsyncOpenAI(
        base_url=f"{worker.url}/v1", api_key="x", max_retries=0, **kwargs
    )
    _open_clients.append(api)
    return api


async def scrape(worker: SimWorker) -> dict[str, float]:
    """``/metrics`` as {sample name with labels: value}, plus bare names summed."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{worker.url}/metrics") as resp,
    ):
        text = await resp.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
        bare = re.sub(r"\{.*\}", "", key)
        if bare != key:
            samples[bare] = samples.get(bare, 0.0) + float(value)
    return samples


async def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> None:
    """Poll an async predicate until it holds, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
