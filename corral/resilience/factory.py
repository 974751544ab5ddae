"""Builders the composition root calls: resilience parts from the settings."""

from __future__ import annotations

from corral.config.settings import Settings
from corral.resilience.admission import AdmissionController
from corral.resilience.breaker import CircuitBreakers
from corral.resilience.views import PoolView


def build_breaker(settings: Settings, registry: PoolView) -> CircuitBreakers:
    """Per-worker circuit breakers following ``registry`` (fail soft per pool).

    Disabled breakers (``circuit_breaker.enabled: false``) allow every worker.
    """
    return CircuitBreakers(settings.circuit_breaker, registry=registry)


def build_admission(settings: Settings, registry: PoolView) -> AdmissionController:
    """Admission control per ``settings.admission``; with the defaults it admits
    everything at once (no limit, no queue, no rate limit, no shedding)."""
    return AdmissionController(
        settings.admission, registry=registry, load_metrics=settings.load_metrics
    )
