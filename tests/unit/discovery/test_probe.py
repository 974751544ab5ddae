from __future__ import annotations

import aiohttp
import pytest

from corral.discovery import fetch_models, probe_health, probe_registration
from corral.pool import make_worker
from tests.conftest import free_port


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


async def test_health_probe_accepts_2xx_only(session, fake_worker):
    engine = await fake_worker()
    worker = make_worker(engine.url)
    assert (await probe_health(session, worker, timeout_s=1)).ok
    engine.health_status = 503
    result = await probe_health(session, worker, timeout_s=1)
    assert not result.ok
    assert "503" in result.reason


async def test_health_probe_reports_a_refused_connection(session):
    worker = make_worker(f"http://127.0.0.1:{free_port()}")
    result = await probe_health(session, worker, timeout_s=1)
    assert not result.ok
    assert "/health" in result.reason


async def test_health_probe_times_out(session, fake_worker):
    engine = await fake_worker()
    engine.health_delay_s = 2.0
    result = await probe_health(session, make_worker(engine.url), timeout_s=0.1)
    assert result.reason == "/health: timed out"


async def test_fetch_models_reads_the_openai_list(session, fake_worker):
    engine = await fake_worker(models=["a", "b", "a"])
    assert await fetch_models(session, make_worker(engine.url), timeout_s=1) == (
        "a", "b",
    )


async def test_registration_keeps_declared_models_when_one_is_served(
    session, fake_worker
):
    engine = await fake_worker(models=["a", "z"])
    worker = make_worker(engine.url, models=("a", "b"))
    result = await probe_registration(session, worker, timeout_s=1)
    assert result.ok
    assert result.models == ("a", "b")


async def test_registration_refuses_a_worker_serving_none_of_its_models(
    session, fake_worker
):
    engine = await fake_worker(models=["z"])
    worker = make_worker(engine.url, models=("a",))
    result = await probe_registration(session, worker, timeout_s=1)
    assert not result.ok
    assert "none of the declared a" in result.reason


async def test_registration_refuses_an_empty_model_list(session, fake_worker):
    engine = await fake_worker(models=[])
    result = await probe_registration(session, make_worker(engine.url), timeout_s=1)
    assert not result.ok
    assert "names no model" in result.reason
