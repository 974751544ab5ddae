from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from corral.config.settings import LoadMetricsConfig
from corral.discovery import EngineLoadPoller, parse_engine_metrics
from corral.pool import WorkerRegistry, WorkerState, make_worker
from tests.unit.discovery.fake_worker import SGLANG_METRICS, VLLM_METRICS, eventually


def test_vllm_counts_are_summed_and_kv_usage_averaged_over_engines():
    reading = parse_engine_metrics(VLLM_METRICS)
    assert reading is not None
    assert reading.running == 4.0
    assert reading.waiting == 7.0
    assert reading.kv_usage == pytest.approx(0.5)


def test_sglang_names_are_read():
    reading = parse_engine_metrics(SGLANG_METRICS)
    assert (reading.running, reading.waiting, reading.kv_usage) == (7.0, 4.0, 0.5)


def test_older_vllm_gpu_cache_name_is_read():
    text = "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.4\n"
    reading = parse_engine_metrics(text)
    assert reading.kv_usage == pytest.approx(0.4)
    assert reading.running is None


def test_text_without_engine_names_gives_no_reading():
    assert parse_engine_metrics("# TYPE other gauge\nother 1\n") is None


def test_malformed_text_raises_value_error():
    with pytest.raises(ValueError):
        parse_engine_metrics("vllm:num_requests_running{engine= 3\n")


async def _ready(registry: WorkerRegistry, url: str) -> str:
    worker = registry.upsert(make_worker(url, models=("m",)))
    registry.set_state(worker.id, WorkerState.READY)
    return worker.id


@pytest.mark.parametrize("flavour", ["vllm", "sglang"])
async def test_poller_stores_readings_of_ready_workers(fake_worker, flavour):
    engine = await fake_worker(
        metrics=VLLM_METRICS if flavour == "vllm" else SGLANG_METRICS
    )
    registry = WorkerRegistry()
    worker_id = await _ready(registry, engine.url)
    async with aiohttp.ClientSession() as session:
        poller = EngineLoadPoller(
            registry, LoadMetricsConfig(interval_s=0.05), session=session
        )
        before = time.monotonic()
        (task,) = poller.poll_all()
        assert await task is True
    load = registry.load(worker_id)
    expected = (4.0, 7.0, 0.5) if flavour == "vllm" else (7.0, 4.0, 0.5)
    assert (load.engine_running, load.engine_waiting, load.engine_kv_usage) == expected
    assert load.engine_updated_at >= before
    assert load.engine_fresh(1.0)


async def test_poller_skips_workers_that_are_not_ready(fake_worker):
    engine = await fake_worker()
    registry = WorkerRegistry()
    registry.upsert(make_worker(engine.url, models=("m",)))
    async with aiohttp.ClientSession() as session:
        poller = EngineLoadPoller(registry, LoadMetricsConfig(), session=session)
        assert poller.poll_all() == []
    assert engine.hits["metrics"] == 0


async def test_failed_poll_keeps_the_old_reading_which_goes_stale(fake_worker):
    engine = await fake_worker()
    registry = WorkerRegistry()
    worker_id = await _ready(registry, engine.url)
    async with aiohttp.ClientSession() as session:
        poller = EngineLoadPoller(
            registry, LoadMetricsConfig(interval_s=0.05), session=session
        )
        assert await poller.poll_worker(registry.get(worker_id)) is True
        stamp = registry.load(worker_id).engine_updated_at

        engine.metrics_status = 500
        assert await poller.poll_worker(registry.get(worker_id)) is False
        engine.metrics_status, engine.metrics = 200, "garbage{ 1\n"
        assert await poller.poll_worker(registry.get(worker_id)) is False
    load = registry.load(worker_id)
    assert load.engine_running == 4.0
    assert load.engine_updated_at == stamp
    assert load.engine_fresh(5.0, now=stamp + 1.0)
    assert not load.engine_fresh(0.5, now=stamp + 1.0)


async def test_run_polls_on_its_interval(fake_worker):
    engine = await fake_worker()
    registry = WorkerRegistry()
    await _ready(registry, engine.url)
    poller = EngineLoadPoller(registry, LoadMetricsConfig(interval_s=0.05))
    task = asyncio.create_task(poller.run())
    try:
        await eventually(lambda: engine.hits["metrics"] >= 3, what="three scrapes")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
