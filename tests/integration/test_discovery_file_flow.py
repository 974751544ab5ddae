"""A manifest file, health checks and load polling together, against fake engines."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from corral.config.settings import (
    FileDiscoveryConfig,
    HealthCheckConfig,
    LoadMetricsConfig,
)
from corral.discovery import EngineLoadPoller, FileSource, HealthChecker
from corral.pool import WorkerRegistry, WorkerState
from tests.unit.discovery.fake_worker import SGLANG_METRICS, eventually
from tests.unit.discovery.fake_worker import fake_worker  # noqa: F401


def _write(path: Path, workers: list[dict]) -> None:
    path.write_text(json.dumps({"version": 1, "workers": workers}))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


async def test_manifest_workers_become_ready_carry_load_and_leave(
    tmp_path, fake_worker
):
    vllm = await fake_worker(models=["m"])
    sglang = await fake_worker(models=["m"], metrics=SGLANG_METRICS)
    wrong = await fake_worker(models=["elsewhere"])
    path = tmp_path / "workers.json"
    _write(path, [
        {"url": vllm.url, "model": "m"},
        {"url": sglang.url},
        {"url": wrong.url, "model": "m"},
    ])
    registry = WorkerRegistry()
    parts = [
        FileSource(registry, FileDiscoveryConfig(path=path, poll_interval_s=0.05),
                   drain_timeout_s=2.0),
        HealthChecker(registry, HealthCheckConfig(interval_s=0.05, timeout_s=1)),
        EngineLoadPoller(registry, LoadMetricsConfig(interval_s=0.05)),
    ]
    tasks = [asyncio.create_task(part.run()) for part in parts]
    try:
        await eventually(
            lambda: len(registry.ready_workers("m")) == 2, what="two READY workers"
        )
        assert registry.get(wrong.worker_id).state is WorkerState.PENDING
        await eventually(
            lambda: registry.load(sglang.worker_id).engine_running == 7.0
            and registry.load(vllm.worker_id).engine_running == 4.0,
            what="engine readings",
        )

        registry.load(vllm.worker_id).begin(1)
        _write(path, [{"url": sglang.url}])
        await eventually(
            lambda: registry.get(vllm.worker_id).state is WorkerState.DRAINING,
            what="DRAINING",
        )
        # Nothing in flight on the never-admitted worker: it leaves at once.
        await eventually(lambda: registry.get(wrong.worker_id) is None, what="gone")
        await asyncio.sleep(0.2)
        assert registry.get(vllm.worker_id) is not None
        registry.load(vllm.worker_id).end(1)
        await eventually(lambda: registry.get(vllm.worker_id) is None, what="removal")

        path.write_text("{ broken")
        await asyncio.sleep(0.2)
        assert set(registry.workers_from("file")) == {sglang.worker_id}
        assert registry.get(sglang.worker_id).ready
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
