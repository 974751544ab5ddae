from __future__ import annotations

import asyncio

from corral.discovery import drain_and_remove, start_drain
from corral.pool import WorkerRegistry, WorkerState, make_worker


def _registry_with_worker() -> WorkerRegistry:
    registry = WorkerRegistry()
    registry.upsert(make_worker("http://127.0.0.1:1", models=("m",)))
    registry.set_state("127.0.0.1:1", WorkerState.READY)
    return registry


async def test_drain_waits_for_in_flight_requests_before_removing():
    registry = _registry_with_worker()
    load = registry.load("127.0.0.1:1")
    load.begin(5)
    load.begin(5)
    task = asyncio.create_task(drain_and_remove(registry, "127.0.0.1:1", 5.0))
    await asyncio.sleep(0.02)
    assert registry.get("127.0.0.1:1").state is WorkerState.DRAINING
    assert registry.ready_workers("m") == ()
    load.end(5)
    await asyncio.sleep(0.15)
    assert not task.done()
    assert registry.get("127.0.0.1:1") is not None
    load.end(5)
    assert await asyncio.wait_for(task, 2.0) is True
    assert registry.get("127.0.0.1:1") is None


async def test_drain_removes_anyway_at_the_timeout():
    registry = _registry_with_worker()
    registry.load("127.0.0.1:1").begin(1)
    assert await drain_and_remove(registry, "127.0.0.1:1", 0.1) is False
    assert registry.get("127.0.0.1:1") is None


async def test_drain_twice_concurrently_is_safe():
    registry = _registry_with_worker()
    registry.load("127.0.0.1:1").begin(1)
    first = asyncio.create_task(drain_and_remove(registry, "127.0.0.1:1", 5.0))
    second = asyncio.create_task(drain_and_remove(registry, "127.0.0.1:1", 5.0))
    await asyncio.sleep(0.05)
    registry.load("127.0.0.1:1").end(1)
    results = await asyncio.wait_for(asyncio.gather(first, second), 2.0)
    assert True in results
    assert registry.get("127.0.0.1:1") is None
    assert await drain_and_remove(registry, "127.0.0.1:1", 1.0) is False


async def test_start_drain_returns_the_running_task_for_the_same_worker():
    registry = _registry_with_worker()
    registry.load("127.0.0.1:1").begin(1)
    first = start_drain(registry, "127.0.0.1:1", 5.0)
    assert registry.get("127.0.0.1:1").state is WorkerState.DRAINING
    assert start_drain(registry, "127.0.0.1:1", 5.0) is first
    registry.load("127.0.0.1:1").end(1)
    assert await asyncio.wait_for(first, 2.0) is True


async def test_health_results_do_not_pull_a_draining_worker_back():
    registry = _registry_with_worker()
    registry.load("127.0.0.1:1").begin(1)
    task = start_drain(registry, "127.0.0.1:1", 5.0)
    registry.set_state("127.0.0.1:1", WorkerState.READY)
    assert registry.get("127.0.0.1:1").state is WorkerState.DRAINING
    registry.load("127.0.0.1:1").end(1)
    await asyncio.wait_for(task, 2.0)
