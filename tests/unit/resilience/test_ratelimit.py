"""Token buckets and per-key rate limits: refill, bursts, Retry-After, keys."""

from __future__ import annotations

import hashlib

import pytest

from corral.config.settings import AdmissionConfig
from corral.errors import RateLimited
from corral.resilience.ratelimit import ANONYMOUS, RateLimiter, TokenBucket, tenant_key
from tests.unit.resilience.fakes import FakeClock

BEARER_A = {"authorization": "Bearer sk-alpha"}
BEARER_B = {"authorization": "Bearer sk-beta"}


def limiter(**fields: object) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(AdmissionConfig.model_validate(fields), clock=clock), clock


@pytest.mark.parametrize(
    ("level", "amount", "wait"),
    [(10, 5, 0.0), (2, 5, 1.5), (0, 1, 0.5), (0, 50, 5.0)],
    ids=["enough", "short-by-three", "empty", "bigger-than-capacity-waits-for-full"],
)
def test_bucket_wait_is_the_deficit_over_the_rate(
    level: float, amount: float, wait: float
) -> None:
    bucket = TokenBucket(capacity=10, rate=2, level=level, updated_at=0)
    assert bucket.wait_for(amount) == pytest.approx(wait)


def test_bucket_refills_at_its_rate_up_to_capacity() -> None:
    bucket = TokenBucket.full(capacity=10, rate=2, now=0)
    bucket.take(10)
    bucket.refill(2.0)
    assert bucket.level == pytest.approx(4)
    bucket.refill(100.0)
    assert bucket.level == 10


@pytest.mark.parametrize(
    ("headers", "tenant_header", "expected"),
    [
        ({"x-tenant": "acme", **BEARER_A}, "X-Tenant", "tenant:acme"),
        (
            BEARER_A,
            "x-tenant",
            "key:" + hashlib.sha256(b"sk-alpha").hexdigest()[:32],
        ),
        (
            {"authorization": "bearer  sk-alpha "},
            None,
            "key:" + hashlib.sha256(b"sk-alpha").hexdigest()[:32],
        ),
        ({"authorization": "Basic abc"}, None, ANONYMOUS),
        ({}, None, ANONYMOUS),
    ],
    ids=[
        "tenant-header-wins",
        "falls-back-to-bearer",
        "bearer-scheme-any-case",
        "non-bearer-is-anonymous",
        "nothing-is-anonymous",
    ],
)
def test_tenant_key_never_holds_the_raw_secret(
    headers: dict[str, str], tenant_header: str | None, expected: str
) -> None:
    key = tenant_key(headers, tenant_header)
    assert key == expected
    assert "sk-alpha" not in key


def test_requests_per_second_allows_the_burst_then_429_with_retry_after() -> None:
    rate, clock = limiter(rate_limit_requests_per_s=2, rate_limit_request_burst=3)
    for _ in range(3):
        rate.charge(BEARER_A, 0)
    with pytest.raises(RateLimited) as refused:
        rate.charge(BEARER_A, 0)
    assert refused.value.status == 429
    assert refused.value.headers()["retry-after"] == "1"
    clock.advance(0.5)
    rate.charge(BEARER_A, 0)


def test_keys_have_separate_buckets() -> None:
    rate, _ = limiter(rate_limit_requests_per_s=1)
    rate.charge(BEARER_A, 0)
    rate.charge(BEARER_B, 0)
    with pytest.raises(RateLimited):
        rate.charge(BEARER_A, 0)


def test_tokens_per_minute_retry_after_is_computed_from_the_bucket() -> None:
    rate, clock = limiter(rate_limit_tokens_per_min=600, rate_limit_token_burst=100)
    rate.charge(BEARER_A, 100)
    with pytest.raises(RateLimited) as refused:
        rate.charge(BEARER_A, 55)  # 10 tokens/s: 5.5 s away
    assert refused.value.retry_after_s == 6
    clock.advance(5.5)
    rate.charge(BEARER_A, 55)


def test_a_refused_request_takes_nothing() -> None:
    rate, clock = limiter(rate_limit_requests_per_s=10, rate_limit_tokens_per_min=60)
    rate.charge(BEARER_A, 60)
    for _ in range(5):
        with pytest.raises(RateLimited):
            rate.charge(BEARER_A, 1)
    clock.advance(1)
    rate.charge(BEARER_A, 1)


def test_refund_gives_back_a_charge() -> None:
    rate, _ = limiter(rate_limit_requests_per_s=1)
    charge = rate.charge(BEARER_A, 0)
    rate.refund(charge)
    rate.charge(BEARER_A, 0)


def test_unconfigured_limiter_is_disabled() -> None:
    rate, _ = limiter()
    assert not rate.enabled


def test_key_count_is_bounded_least_recently_used_first() -> None:
    clock = FakeClock()
    config = AdmissionConfig(rate_limit_requests_per_s=1)
    rate = RateLimiter(config, clock=clock, max_keys=2)
    rate.charge(BEARER_A, 0)
    rate.charge(BEARER_B, 0)
    rate.charge({"x": "y"}, 0)  # anonymous pushes out the oldest, A
    rate.charge(BEARER_A, 0)  # A comes back with a full bucket
    with pytest.raises(RateLimited):
        rate.charge({}, 0)  # anonymous is still remembered
