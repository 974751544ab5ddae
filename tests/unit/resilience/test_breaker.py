"""Circuit breakers: what counts, the state machine, probes, fail soft, metrics."""

from __future__ import annotations

import pytest

from corral.config.settings import CircuitBreakerConfig
from corral.observability.metrics import REGISTRY
from corral.resilience.breaker import BreakerState, CircuitBreakers, Outcome, classify
from tests.unit.resilience.fakes import FakeClock, FakeRegistry

CONFIG = CircuitBreakerConfig(
    failure_threshold=3, success_threshold=2, open_duration_s=10.0
)


def make(
    registry: FakeRegistry | None = None, **overrides: object
) -> tuple[CircuitBreakers, FakeClock]:
    clock = FakeClock()
    config = CONFIG.model_copy(update=overrides) if overrides else CONFIG
    return CircuitBreakers(config, registry=registry, clock=clock), clock


def fail(breakers: CircuitBreakers, worker: str, times: int = 1) -> None:
    for _ in range(times):
        breakers.record_outcome(worker, 503, False)


@pytest.mark.parametrize(
    ("status", "reset", "expected"),
    [
        (200, False, Outcome.SUCCESS),
        (204, False, Outcome.SUCCESS),
        (302, False, Outcome.SUCCESS),
        (400, False, Outcome.NEUTRAL),
        (404, False, Outcome.NEUTRAL),
        (429, False, Outcome.NEUTRAL),
        (500, False, Outcome.FAILURE),
        (502, False, Outcome.FAILURE),
        (503, False, Outcome.FAILURE),
        (504, False, Outcome.FAILURE),
        (None, False, Outcome.FAILURE),
        (None, True, Outcome.FAILURE),
        (200, True, Outcome.FAILURE),
    ],
    ids=[
        "200-success",
        "204-success",
        "302-success",
        "400-neutral",
        "404-neutral",
        "429-neutral",
        "500-failure",
        "502-failure",
        "503-failure",
        "504-failure",
        "timeout-failure",
        "reset-failure",
        "reset-after-headers-failure",
    ],
)
def test_classify_counts_5xx_resets_and_timeouts_as_failures(
    status: int | None, reset: bool, expected: Outcome
) -> None:
    assert classify(status, reset) is expected


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breakers, _ = make()
    fail(breakers, "w1", 2)
    breakers.record_outcome("w1", 200, False)  # a success resets the count
    fail(breakers, "w1", 2)
    assert breakers.allows("w1")
    assert breakers.state("w1") is BreakerState.CLOSED
    fail(breakers, "w1")
    assert breakers.state("w1") is BreakerState.OPEN
    assert not breakers.allows("w1")


@pytest.mark.parametrize("status", [400, 404, 429], ids=["400", "404", "429"])
def test_client_errors_never_open_the_breaker(status: int) -> None:
    breakers, _ = make()
    for _ in range(20):
        breakers.record_outcome("w1", status, False)
    assert breakers.state("w1") is BreakerState.CLOSED
    assert breakers.allows("w1")


def test_open_breaker_refuses_until_its_duration_passes_then_half_opens() -> None:
    breakers, clock = make()
    fail(breakers, "w1", 3)
    clock.advance(9.9)
    assert not breakers.allows("w1")
    clock.advance(0.1)
    assert breakers.state("w1") is BreakerState.HALF_OPEN
    assert breakers.allows("w1")


def test_half_open_lets_a_bounded_number_of_probes_through() -> None:
    breakers, clock = make(half_open_max_requests=2)
    fail(breakers, "w1", 3)
    clock.advance(10)
    assert [breakers.allows("w1") for _ in range(4)] == [True, True, False, False]
    breakers.record_outcome("w1", 200, False)  # one probe came back
    assert breakers.allows("w1")
    assert not breakers.allows("w1")


def test_an_unanswered_probe_slot_is_freed_after_the_probe_timeout() -> None:
    breakers, clock = make()
    fail(breakers, "w1", 3)
    clock.advance(10)
    assert breakers.allows("w1")  # reserved, but the request went elsewhere
    assert not breakers.allows("w1")
    clock.advance(10)
    assert breakers.allows("w1")


def test_half_open_closes_after_consecutive_successes() -> None:
    breakers, clock = make()
    fail(breakers, "w1", 3)
    clock.advance(10)
    for _ in range(2):
        assert breakers.allows("w1")
        breakers.record_outcome("w1", 200, False)
    assert breakers.state("w1") is BreakerState.CLOSED
    assert all(breakers.allows("w1") for _ in range(5))


def test_a_failure_while_half_open_reopens_for_a_full_duration() -> None:
    breakers, clock = make()
    fail(breakers, "w1", 3)
    clock.advance(10)
    assert breakers.allows("w1")
    breakers.record_outcome("w1", 200, False)
    assert breakers.allows("w1")
    breakers.record_outcome("w1", None, True)
    assert breakers.state("w1") is BreakerState.OPEN
    clock.advance(9.9)
    assert not breakers.allows("w1")
    clock.advance(0.1)
    assert breakers.allows("w1")


def test_outcomes_arriving_while_open_do_not_extend_it() -> None:
    breakers, clock = make()
    fail(breakers, "w1", 3)
    clock.advance(5)
    fail(breakers, "w1", 5)  # late answers of requests sent before it opened
    clock.advance(5)
    assert breakers.allows("w1")


def test_disabled_breakers_allow_everything() -> None:
    breakers, _ = make(enabled=False)
    fail(breakers, "w1", 50)
    assert breakers.allows("w1")
    assert breakers.state("w1") is BreakerState.CLOSED


def test_unknown_workers_are_allowed() -> None:
    breakers, _ = make()
    assert breakers.allows("never-seen")


def test_fail_soft_allows_the_longest_open_worker_when_a_pool_is_all_open() -> None:
    registry = FakeRegistry()
    for worker in ("a", "b", "c"):
        registry.add(worker, "m")
    breakers, clock = make(registry)
    fail(breakers, "b", 3)
    clock.advance(1)
    fail(breakers, "a", 3)
    assert not breakers.allows("a")
    assert not breakers.allows("b")  # c is still closed: no fail soft
    clock.advance(1)
    fail(breakers, "c", 3)
    assert [breakers.allows(w) for w in ("a", "b", "c")] == [False, True, False]


def test_fail_soft_is_per_pool() -> None:
    registry = FakeRegistry()
    registry.add("a", "m1")
    registry.add("b", "m2")
    registry.add("c", "m2")
    breakers, _ = make(registry)
    fail(breakers, "a", 3)
    fail(breakers, "b", 3)
    assert breakers.allows("a")  # the only member of m1
    assert not breakers.allows("b")  # c serves m2


def test_fail_soft_prefers_a_free_half_open_probe_elsewhere() -> None:
    registry = FakeRegistry()
    registry.add("a", "m")
    registry.add("b", "m")
    breakers, clock = make(registry)
    fail(breakers, "a", 3)
    clock.advance(5)
    fail(breakers, "b", 3)
    clock.advance(5)  # a half-opens, b stays open
    assert not breakers.allows("b")
    assert breakers.allows("a")  # the probe


def test_removed_workers_are_forgotten_with_their_metric() -> None:
    registry = FakeRegistry()
    registry.add("gone-worker", "m")
    registry.add("other", "m")
    breakers, _ = make(registry)
    fail(breakers, "gone-worker", 3)
    assert (
        REGISTRY.get_sample_value(
            "corral_circuit_breaker_open", {"worker": "gone-worker"}
        )
        == 1
    )
    registry.remove("gone-worker")
    assert breakers.state("gone-worker") is BreakerState.CLOSED
    assert (
        REGISTRY.get_sample_value(
            "corral_circuit_breaker_open", {"worker": "gone-worker"}
        )
        is None
    )
    breakers.close()
    assert registry.listeners == []


def test_breaker_metric_reads_one_while_open_and_zero_once_closed() -> None:
    breakers, clock = make()
    fail(breakers, "metric-worker", 3)
    sample = {"worker": "metric-worker"}
    assert REGISTRY.get_sample_value("corral_circuit_breaker_open", sample) == 1
    clock.advance(10)
    for _ in range(2):
        assert breakers.allows("metric-worker")
        breakers.record_outcome("metric-worker", 200, False)
    assert REGISTRY.get_sample_value("corral_circuit_breaker_open", sample) == 0


class _CountedLoad:
    """A load with the gateway's in-flight count, as ``WorkerLoad`` has."""

    def __init__(self) -> None:
        self.requests = 0

    def engine_fresh(self, max_age_s: float, now: float | None = None) -> bool:
        return False


def test_half_open_probes_are_the_requests_really_in_flight() -> None:
    registry = FakeRegistry()
    registry.add("w1", "m")
    registry.add("w2", "m")
    load = _CountedLoad()
    registry.loads["w1"] = load  # type: ignore[assignment]
    breakers, clock = make(registry)
    fail(breakers, "w1", 3)
    clock.advance(10)
    # Asked for every candidate; the policy picked another worker each time:
    # nothing is reserved, so the next request may still probe w1.
    assert [breakers.allows("w1") for _ in range(3)] == [True, True, True]
    load.requests = 1  # a request was sent to w1: that is the probe
    assert not breakers.allows("w1")
    load.requests = 0
    breakers.record_outcome("w1", 200, False)
    assert breakers.allows("w1")
    load.requests = 1
    breakers.record_outcome("w1", 200, False)
    assert breakers.state("w1") is BreakerState.CLOSED
