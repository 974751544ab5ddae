from __future__ import annotations

import asyncio

from corral.config.settings import StaticWorker
from corral.discovery import sync_source, worker_from_spec
from corral.pool import WorkerRegistry, WorkerState, make_worker
from tests.unit.discovery.fake_worker import eventually


def _worker(port: int, **kwargs):
    return make_worker(f"http://127.0.0.1:{port}", source="file", **kwargs)


async def test_new_workers_are_added_pending():
    registry = WorkerRegistry()
    result = sync_source(registry, "file", [_worker(1, models=("m",)), _worker(2)])
    assert set(result.added) == {"127.0.0.1:1", "127.0.0.1:2"}
    assert registry.get("127.0.0.1:1").state is WorkerState.PENDING
    assert registry.get("127.0.0.1:1").source == "file"


async def test_changed_declaration_updates_in_place_and_keeps_health():
    registry = WorkerRegistry()
    sync_source(registry, "file", [_worker(1, models=("m",))])
    registry.set_state("127.0.0.1:1", WorkerState.READY)
    result = sync_source(registry, "file", [_worker(1, models=("m",), role="prefill")])
    assert result.updated == ("127.0.0.1:1",)
    worker = registry.get("127.0.0.1:1")
    assert worker.role.value == "prefill"
    assert worker.state is WorkerState.READY


async def test_unchanged_sync_changes_nothing():
    registry = WorkerRegistry()
    sync_source(registry, "file", [_worker(1, labels={"a": "b"})])
    version = registry.snapshot().version
    result = sync_source(registry, "file", [_worker(1, labels={"a": "b"})])
    assert not result.changed
    assert registry.snapshot().version == version


async def test_worker_declared_without_models_keeps_discovered_models():
    registry = WorkerRegistry()
    sync_source(registry, "file", [_worker(1)])
    registry.set_models("127.0.0.1:1", ("found",))
    sync_source(registry, "file", [_worker(1)])
    assert registry.get("127.0.0.1:1").models == ("found",)


async def test_gone_worker_is_drained_then_removed():
    registry = WorkerRegistry()
    sync_source(registry, "file", [_worker(1), _worker(2)])
    registry.load("127.0.0.1:2").begin(10)
    result = sync_source(registry, "file", [_worker(1)], drain_timeout_s=5)
    assert result.draining == ("127.0.0.1:2",)
    assert registry.get("127.0.0.1:2").state is WorkerState.DRAINING
    await asyncio.sleep(0.1)
    assert registry.get("127.0.0.1:2") is not None  # one request still in flight
    registry.load("127.0.0.1:2").end(10)
    await eventually(lambda: registry.get("127.0.0.1:2") is None, what="removal")
    assert registry.get("127.0.0.1:1") is not None


async def test_worker_wanted_again_while_draining_is_readded_pending():
    registry = WorkerRegistry()
    sync_source(registry, "file", [_worker(1)])
    registry.set_state("127.0.0.1:1", WorkerState.READY)
    registry.load("127.0.0.1:1").begin(1)
    sync_source(registry, "file", [], drain_timeout_s=5)
    assert registry.get("127.0.0.1:1").state is WorkerState.DRAINING
    result = sync_source(registry, "file", [_worker(1)])
    assert result.added == ("127.0.0.1:1",)
    assert registry.get("127.0.0.1:1").state is WorkerState.PENDING
    await asyncio.sleep(0.1)  # the cancelled drain must not remove it later
    assert registry.get("127.0.0.1:1") is not None


async def test_id_owned_by_another_source_is_skipped():
    registry = WorkerRegistry()
    registry.upsert(make_worker("http://127.0.0.1:1", source="static"))
    result = sync_source(registry, "file", [_worker(1, models=("x",))])
    assert result.skipped == ("127.0.0.1:1",)
    assert registry.get("127.0.0.1:1").source == "static"
    assert registry.get("127.0.0.1:1").models == ()


async def test_sync_never_touches_other_sources_workers():
    registry = WorkerRegistry()
    registry.upsert(make_worker("http://127.0.0.1:9", source="admin"))
    sync_source(registry, "file", [])
    assert registry.get("127.0.0.1:9").state is WorkerState.PENDING


def test_worker_from_spec_merges_model_and_models():
    spec = StaticWorker(url="127.0.0.1:8000", model="a", models=["b", "a"])
    worker = worker_from_spec(spec, "static")
    assert worker.models == ("a", "b")
    assert worker.url == "http://127.0.0.1:8000"
