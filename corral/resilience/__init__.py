"""Keeping worker failures from becoming client failures: per-worker circuit
breakers (the ext_proc ``WorkerFilter`` hook) and admission control (the ext_proc
``Admission`` hook: concurrency queue, rate limits, overload shedding)."""

from corral.resilience.admission import AdmissionController, prompt_tokens
from corral.resilience.breaker import BreakerState, CircuitBreakers, Outcome, classify
from corral.resilience.factory import build_admission, build_breaker
from corral.resilience.queue import ConcurrencyLimiter, Release
from corral.resilience.ratelimit import RateLimiter, TokenBucket, tenant_key

__all__ = [
    "AdmissionController",
    "BreakerState",
    "CircuitBreakers",
    "ConcurrencyLimiter",
    "Outcome",
    "RateLimiter",
    "Release",
    "TokenBucket",
    "build_admission",
    "build_breaker",
    "classify",
    "prompt_tokens",
    "tenant_key",
]
