"""Keeping worker failures from becoming client failures: per-worker circuit
breakers (the ext_proc ``WorkerFilter`` hook) and admission control (the ext_proc
``Admission`` hook: concurrency queue, rate limits, overload shedding)."""

from corral.resilience.admission import AdmissionController, AdmissionRequest
from corral.resilience.breaker import BreakerState, CircuitBreakers, Outcome, classify
from corral.resilience.queue import ConcurrencyLimiter, Release
from corral.resilience.ratelimit import RateLimiter, TokenBucket, tenant_key

__all__ = [
    "AdmissionController",
    "AdmissionRequest",
    "BreakerState",
    "CircuitBreakers",
    "ConcurrencyLimiter",
    "Outcome",
    "RateLimiter",
    "Release",
    "TokenBucket",
    "classify",
    "tenant_key",
]
