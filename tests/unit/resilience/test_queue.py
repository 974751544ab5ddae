"""The per-pool concurrency limit: FIFO hand-off, queue full, timeout, cancel."""

from __future__ import annotations

import asyncio

import pytest

from corral.errors import RateLimited, ServiceUnavailable
from corral.observability.metrics import REGISTRY
from corral.resilience.queue import ConcurrencyLimiter


def make(
    limit: int = 1, queue_size: int = 2, timeout_s: float = 5.0
) -> ConcurrencyLimiter:
    return ConcurrencyLimiter(
        "queue-model", limit=limit, queue_size=queue_size, timeout_s=timeout_s
    )


async def until(predicate, timeout_s: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0)


async def test_slots_are_granted_up_to_the_limit_without_waiting() -> None:
    limiter = make(limit=2)
    await limiter.acquire()
    await limiter.acquire()
    assert limiter.in_flight == 2
    assert limiter.queued == 0


async def test_waiters_are_served_first_in_first_out() -> None:
    limiter = make(limit=1, queue_size=3)
    release = await limiter.acquire()
    order: list[int] = []

    async def wait(n: int) -> None:
        done = await limiter.acquire()
        order.append(n)
        done()

    tasks = []
    for n in range(3):
        tasks.append(asyncio.create_task(wait(n)))
        await until(lambda n=n: limiter.queued == n + 1)
    release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert limiter.in_flight == 0


async def test_a_full_queue_answers_429_queue_full_with_retry_after() -> None:
    limiter = make(limit=1, queue_size=1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await until(lambda: limiter.queued == 1)
    with pytest.raises(RateLimited) as refused:
        await limiter.acquire()
    assert refused.value.status == 429
    assert refused.value.code == "admission_queue_full"
    assert refused.value.headers()["retry-after"] == "1"
    waiter.cancel()


async def test_a_zero_queue_refuses_at_once_when_busy() -> None:
    limiter = make(limit=1, queue_size=0)
    await limiter.acquire()
    with pytest.raises(RateLimited):
        await limiter.acquire()


async def test_a_wait_past_the_timeout_answers_503_and_leaves_the_queue() -> None:
    limiter = make(limit=1, queue_size=1, timeout_s=0.05)
    await limiter.acquire()
    with pytest.raises(ServiceUnavailable) as refused:
        await limiter.acquire()
    assert refused.value.status == 503
    assert refused.value.code == "admission_queue_timeout"
    assert refused.value.retry_after_s == 1
    assert limiter.queued == 0
    assert (
        REGISTRY.get_sample_value(
            "corral_admission_queue_depth", {"model": "queue-model"}
        )
        == 0
    )


async def test_a_cancelled_waiter_leaves_the_queue_and_frees_its_place() -> None:
    limiter = make(limit=1, queue_size=1)
    release = await limiter.acquire()
    gone = asyncio.create_task(limiter.acquire())
    await until(lambda: limiter.queued == 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert limiter.queued == 0
    release()
    assert limiter.in_flight == 0


async def test_a_slot_handed_to_a_cancelled_waiter_passes_to_the_next() -> None:
    limiter = make(limit=1, queue_size=2)
    release = await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    await until(lambda: limiter.queued == 1)
    second = asyncio.create_task(limiter.acquire())
    await until(lambda: limiter.queued == 2)
    release()  # the slot goes to `first`, which is cancelled before it runs
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release_second = await asyncio.wait_for(second, 1.0)
    assert limiter.in_flight == 1
    release_second()
    assert limiter.in_flight == 0


async def test_release_is_idempotent() -> None:
    limiter = make(limit=1)
    release = await limiter.acquire()
    release()
    release()
    assert limiter.in_flight == 0
    await limiter.acquire()
    assert limiter.in_flight == 1
