"""Admission as the ext_proc hook sees it: defaults, shedding, limits, ordering."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from corral.config.settings import AdmissionConfig, LoadMetricsConfig
from corral.errors import RateLimited, ServiceUnavailable
from corral.observability.metrics import REGISTRY
from corral.resilience.admission import AdmissionController, prompt_tokens
from tests.unit.resilience.fakes import FakeClock, FakeRegistry


@dataclass
class Req:
    headers: dict[str, str] = field(default_factory=dict)
    token_count: int = 0
    text: str | None = None


def controller(
    registry: FakeRegistry | None = None, **fields: object
) -> tuple[AdmissionController, FakeClock]:
    clock = FakeClock()
    admission = AdmissionController(
        AdmissionConfig.model_validate(fields),
        registry=registry,
        load_metrics=LoadMetricsConfig(stale_after_s=5),
        clock=clock,
    )
    return admission, clock


def reading(
    registry: FakeRegistry, worker: str, at: float, waiting: float, kv: float
) -> None:
    load = registry.loads[worker]
    load.engine_waiting, load.engine_kv_usage, load.engine_updated_at = waiting, kv, at


def admitted(model: str) -> float:
    value = REGISTRY.get_sample_value(
        "corral_admission_total", {"model": model, "result": "admitted"}
    )
    return value or 0.0


async def test_defaults_admit_everything_at_once() -> None:
    admission, _ = controller(FakeRegistry())
    assert not admission.active
    releases = [await admission.acquire("m", Req()) for _ in range(1000)]
    assert admission.limiter("m") is None
    for release in releases:
        release()


@pytest.mark.parametrize(
    ("readings", "sheds"),
    [
        ([(10, 0.1), (12, 0.2)], True),
        ([(0, 0.95), (1, 0.9)], True),
        ([(10, 0.1), (2, 0.5)], False),
        ([(10, 0.1), None], False),
        ([(10, 0.1), "stale"], False),
    ],
    ids=[
        "all-waiting-over",
        "all-kv-over",
        "one-has-room",
        "one-has-no-reading",
        "one-reading-is-stale",
    ],
)
async def test_shed_with_503_only_when_every_worker_is_freshly_overloaded(
    readings: list[object], sheds: bool
) -> None:
    registry = FakeRegistry()
    admission, clock = controller(
        registry, shed_waiting_threshold=8, shed_kv_usage_threshold=0.9
    )
    for n, value in enumerate(readings):
        registry.add(f"w{n}", "m")
        if value == "stale":
            reading(registry, f"w{n}", clock.now - 6, 50, 1.0)
        elif value is not None:
            waiting, kv = value  # type: ignore[misc]
            reading(registry, f"w{n}", clock.now - 1, waiting, kv)
    if sheds:
        with pytest.raises(ServiceUnavailable) as refused:
            await admission.acquire("m", Req())
        assert refused.value.status == 503
        assert refused.value.code == "worker_overload_protection_shed"
        assert refused.value.headers()["retry-after"] == "1"
    else:
        release = await admission.acquire("m", Req())
        release()


async def test_no_ready_worker_is_not_a_shed() -> None:
    admission, _ = controller(FakeRegistry(), shed_waiting_threshold=1)
    release = await admission.acquire("m", Req())
    release()


async def test_rate_limit_answers_429_with_retry_after_from_the_bucket() -> None:
    admission, _ = controller(rate_limit_tokens_per_min=60, rate_limit_token_burst=30)
    key = {"authorization": "Bearer sk-1"}
    await admission.acquire("m", Req(headers=key, token_count=30))
    with pytest.raises(RateLimited) as refused:
        await admission.acquire("m", Req(headers=key, token_count=10))
    assert refused.value.retry_after_s == 10
    await admission.acquire("m", Req(headers={"authorization": "Bearer sk-2"}))


async def test_explicit_headers_override_the_request_object() -> None:
    admission, _ = controller(rate_limit_requests_per_s=1, tenant_header="x-tenant")
    await admission.acquire("m", object(), headers={"x-tenant": "a"})
    await admission.acquire("m", object(), headers={"x-tenant": "b"})
    with pytest.raises(RateLimited):
        await admission.acquire("m", object(), headers={"x-tenant": "a"})


async def test_pools_have_separate_concurrency_limits() -> None:
    admission, _ = controller(max_concurrent=1, queue_size=0)
    await admission.acquire("pool-a", Req())
    await admission.acquire("pool-b", Req())
    with pytest.raises(RateLimited):
        await admission.acquire("pool-a", Req())


async def test_queue_refusal_gives_the_rate_limit_charge_back() -> None:
    admission, _ = controller(
        max_concurrent=1,
        queue_size=0,
        rate_limit_requests_per_s=1,
        rate_limit_request_burst=2,
    )
    release = await admission.acquire("m", Req())
    for _ in range(3):  # refused by the queue, never by the rate limit
        with pytest.raises(RateLimited) as refused:
            await admission.acquire("m", Req())
        assert refused.value.code == "admission_queue_full"
    release()
    await admission.acquire("m", Req())


async def test_a_queued_request_is_admitted_when_a_slot_frees() -> None:
    admission, _ = controller(max_concurrent=1, queue_size=1)
    before = admitted("queued-pool")
    release = await admission.acquire("queued-pool", Req())
    waiting = asyncio.create_task(admission.acquire("queued-pool", Req()))
    await asyncio.sleep(0)
    assert not waiting.done()
    release()
    second = await asyncio.wait_for(waiting, 1.0)
    second()
    assert admitted("queued-pool") == before + 2


@pytest.mark.parametrize(
    ("request_", "tokens"),
    [
        (Req(token_count=42, text="x" * 400), 42),
        (Req(text="x" * 400), 100),
        (type("P", (), {"token_ids": [1, 2, 3], "text": None})(), 3),
        (type("P", (), {"routing_text": "abcdefgh"})(), 2),
        (object(), 0),
    ],
    ids=["token-count", "text-quarter", "token-ids", "routing-text", "nothing"],
)
def test_prompt_tokens_prefers_exact_counts(request_: object, tokens: int) -> None:
    assert prompt_tokens(request_) == tokens
