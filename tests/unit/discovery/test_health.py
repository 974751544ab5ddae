from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from corral.config.settings import HealthCheckConfig
from corral.discovery import HealthChecker
from corral.observability.metrics import REGISTRY as METRICS
from corral.pool import WorkerRegistry, WorkerState, make_worker
from tests.unit.discovery.fake_worker import eventually

FAST = HealthCheckConfig(
    interval_s=0.05, timeout_s=0.5, failure_threshold=3, success_threshold=2
)


@pytest.fixture
async def checked() -> AsyncIterator[WorkerRegistry]:
    registry = WorkerRegistry()
    task = asyncio.create_task(HealthChecker(registry, FAST).run())
    yield registry
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _state(registry: WorkerRegistry, worker_id: str) -> WorkerState | None:
    worker = registry.get(worker_id)
    return None if worker is None else worker.state


async def test_pending_becomes_ready_only_after_health_and_models(checked, fake_worker):
    engine = await fake_worker(models=["m"])
    engine.health_status = 503
    checked.upsert(make_worker(engine.url, models=("m",)))
    await eventually(lambda: engine.hits["health"] >= 2, what="health probes")
    assert _state(checked, engine.worker_id) is WorkerState.PENDING

    engine.health_status = 200
    engine.models_status = 500
    await eventually(lambda: engine.hits["models"] >= 2, what="models probes")
    assert _state(checked, engine.worker_id) is WorkerState.PENDING

    engine.models_status = 200
    await eventually(
        lambda: _state(checked, engine.worker_id) is WorkerState.READY, what="READY"
    )
    assert checked.ready_workers("m") == (checked.get(engine.worker_id),)


async def test_pending_worker_is_probed_as_soon_as_it_is_added(fake_worker):
    engine = await fake_worker()
    registry = WorkerRegistry()
    slow = HealthCheckConfig(interval_s=30, timeout_s=0.5)
    task = asyncio.create_task(HealthChecker(registry, slow).run())
    try:
        await asyncio.sleep(0.05)  # the first round has run, on an empty registry
        registry.upsert(make_worker(engine.url, models=("m",)))
        await eventually(
            lambda: _state(registry, engine.worker_id) is WorkerState.READY,
            timeout_s=2.0, what="READY well before the 30 s round",
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_worker_lacking_its_declared_model_stays_out(checked, fake_worker):
    engine = await fake_worker(models=["other"])
    checked.upsert(make_worker(engine.url, models=("m",)))
    await eventually(lambda: engine.hits["models"] >= 3, what="repeated probes")
    assert _state(checked, engine.worker_id) is WorkerState.PENDING
    assert checked.ready_workers("m") == ()


async def test_models_of_an_undeclared_worker_come_from_v1_models(checked, fake_worker):
    engine = await fake_worker(models=["a", "b"])
    checked.upsert(make_worker(engine.url))
    await eventually(
        lambda: _state(checked, engine.worker_id) is WorkerState.READY, what="READY"
    )
    assert checked.get(engine.worker_id).models == ("a", "b")
    assert "a" in checked.snapshot().models


async def test_ready_not_ready_ready_follows_the_thresholds(checked, fake_worker):
    engine = await fake_worker()
    checked.upsert(make_worker(engine.url, models=("m",)))
    await eventually(
        lambda: _state(checked, engine.worker_id) is WorkerState.READY, what="READY"
    )
    states: list[WorkerState] = []
    checked.subscribe(lambda snap: states.append(snap.workers[engine.worker_id].state))

    start = engine.hits["health"]
    engine.health_status = 500
    await eventually(
        lambda: _state(checked, engine.worker_id) is WorkerState.NOT_READY,
        what="NOT_READY",
    )
    # Exactly failure_threshold failed probes moved it (one may be in flight).
    assert engine.hits["health"] - start in (3, 4)

    engine.health_status = 200
    start = engine.hits["health"]
    await eventually(
        lambda: _state(checked, engine.worker_id) is WorkerState.READY,
        what="READY again",
    )
    assert engine.hits["health"] - start in (2, 3)  # success_threshold = 2
    assert states == [WorkerState.NOT_READY, WorkerState.READY]


async def test_not_ready_worker_keeps_being_probed(checked, fake_worker):
    engine = await fake_worker()
    checked.upsert(make_worker(engine.url, models=("m",)))
    await eventually(
        lambda: _state(checked, engine.worker_id) is WorkerState.READY, what="READY"
    )
    engine.health_status = 500
    await eventually(
        lambda: _state(checked, engine.worker_id) is WorkerState.NOT_READY,
        what="NOT_READY",
    )
    seen = engine.hits["health"]
    await eventually(lambda: engine.hits["health"] >= seen + 5, what="more probes")
    assert _state(checked, engine.worker_id) is WorkerState.NOT_READY


async def test_a_hung_worker_does_not_delay_the_others(checked, fake_worker):
    hung = await fake_worker()
    hung.health_delay_s = 5.0
    fine = await fake_worker()
    checked.upsert(make_worker(hung.url, models=("m",)))
    checked.upsert(make_worker(fine.url, models=("m",)))
    started = time.monotonic()
    await eventually(
        lambda: _state(checked, fine.worker_id) is WorkerState.READY, what="READY"
    )
    seen = fine.hits["health"]
    await eventually(lambda: fine.hits["health"] >= seen + 4, what="steady probes")
    # Four rounds at 0.05 s with a 0.5 s timeout on the hung worker: serial
    # probing would have needed at least 2 s.
    assert time.monotonic() - started < 1.5
    assert _state(checked, hung.worker_id) is WorkerState.PENDING


async def test_health_results_and_worker_gauge_are_recorded(checked, fake_worker):
    def sample(name: str, **labels: str) -> float:
        return METRICS.get_sample_value(name, labels) or 0.0

    successes = sample("corral_health_checks_total", result="success")
    engine = await fake_worker(models=["gauge-model"])
    checked.upsert(make_worker(engine.url, models=("gauge-model",)))
    await eventually(
        lambda: sample("corral_workers", model="gauge-model", state="ready") == 1,
        what="gauge at ready",
    )
    assert sample("corral_workers", model="gauge-model", state="pending") == 0
    assert sample("corral_health_checks_total", result="success") > successes
    checked.remove(engine.worker_id)
    assert sample("corral_workers", model="gauge-model", state="ready") == 0


async def test_a_worker_named_by_host_name_is_resolved_before_it_takes_traffic(
    checked, fake_worker, monkeypatch
):
    from corral.discovery import health
    from corral.xds.resources import build_assignment

    engine = await fake_worker(models=["m"])
    answers: dict[str, str | None] = {"worker-a.pool.internal": None}

    async def resolve(host: str, port: int) -> str | None:
        return answers.get(host)

    monkeypatch.setattr(health, "resolve", resolve)
    port = engine.url.rsplit(":", 1)[1]
    checked.upsert(make_worker(f"http://worker-a.pool.internal:{port}", models=("m",)))
    worker_id = f"worker-a.pool.internal:{port}"
    await asyncio.sleep(0.2)
    # Unresolved: never READY, and not offered to Envoy.
    assert _state(checked, worker_id) is WorkerState.PENDING
    assert not build_assignment("m", checked.snapshot().pool("m")).endpoints
    answers["worker-a.pool.internal"] = "127.0.0.1"
    await eventually(lambda: _state(checked, worker_id) is WorkerState.READY,
                     what="resolved worker ready")
    worker = checked.get(worker_id)
    assert worker.address == f"127.0.0.1:{port}"
    endpoint = build_assignment("m", [worker]).endpoints[0].lb_endpoints[0]
    assert endpoint.endpoint.address.socket_address.address == "127.0.0.1"
    # The name stops resolving: out of rotation, back when it resolves again.
    answers["worker-a.pool.internal"] = None
    await eventually(lambda: _state(checked, worker_id) is WorkerState.NOT_READY,
                     what="unresolvable worker out")
