"""Health checks and load polling against the simulated vLLM and SGLang engines."""

from __future__ import annotations

import asyncio

import pytest

from corral.config.settings import HealthCheckConfig, LoadMetricsConfig
from corral.discovery import EngineLoadPoller, HealthChecker
from corral.pool import WorkerRegistry, make_worker
from corral.simulator import SimConfig, SimWorker
from tests.unit.discovery.fake_worker import eventually


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
async def test_simulated_engine_is_admitted_and_its_load_read(engine):
    sim = SimWorker(SimConfig(model="sim-model", engine=engine, port=0))
    await sim.start()
    registry = WorkerRegistry()
    parts = [
        HealthChecker(registry, HealthCheckConfig(interval_s=0.05, timeout_s=1)),
        EngineLoadPoller(registry, LoadMetricsConfig(interval_s=0.05)),
    ]
    tasks = [asyncio.create_task(part.run()) for part in parts]
    try:
        worker = registry.upsert(make_worker(sim.url))  # models from /v1/models
        await eventually(lambda: registry.get(worker.id).ready, what="READY")
        assert registry.get(worker.id).models == ("sim-model",)
        load = registry.load(worker.id)
        await eventually(lambda: load.engine_updated_at > 0, what="engine reading")
        assert load.engine_running == 0
        assert load.engine_waiting == 0
        assert load.engine_kv_usage is not None
        assert 0.0 <= load.engine_kv_usage <= 1.0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sim.stop()
