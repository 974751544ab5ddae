from __future__ import annotations

import asyncio
import logging

from corral.config.settings import HealthCheckConfig, StaticWorker
from corral.discovery import DiscoverySource, HealthChecker, StaticSource
from corral.pool import WorkerRegistry, WorkerState
from tests.unit.discovery.fake_worker import eventually


def test_static_source_satisfies_the_contract():
    assert isinstance(StaticSource(WorkerRegistry(), []), DiscoverySource)


async def test_configured_workers_are_registered_and_bad_ones_skipped(caplog):
    registry = WorkerRegistry()
    specs = [
        StaticWorker(url="http://127.0.0.1:8001", model="m", labels={"zone": "a"}),
        StaticWorker(url="http://127.0.0.1:8002/v1", model="m"),
    ]
    caplog.set_level(logging.WARNING)
    StaticSource(registry, specs).sync()
    assert set(registry.workers_from("static")) == {"127.0.0.1:8001"}
    assert registry.get("127.0.0.1:8001").labels == {"zone": "a"}
    assert "workers[1] skipped" in caplog.text


async def test_worker_without_models_gets_them_from_probing(fake_worker):
    engine = await fake_worker(models=["served"])
    registry = WorkerRegistry()
    source = StaticSource(registry, [StaticWorker(url=engine.url)])
    checker = HealthChecker(registry, HealthCheckConfig(interval_s=0.05, timeout_s=1))
    tasks = [asyncio.create_task(source.run()), asyncio.create_task(checker.run())]
    try:
        await eventually(
            lambda: registry.ready_workers("served") != (), what="READY with models"
        )
        assert registry.get(engine.worker_id).state is WorkerState.READY
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
