"""Seams for resilience features: worker filtering (breakers) and admission.

The ext_proc server calls these and knows nothing else of them; the defaults
do nothing, so the server works before any resilience feature is plugged in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from corral.routing.base import RoutingRequest

Release = Callable[[], None]


class WorkerFilter(Protocol):
    """Decides which workers may take new requests (a circuit breaker, say).

    ``allows`` runs on the hot path, once per candidate: it must be quick.
    ``record_outcome`` receives every finished attempt: the HTTP status the
    worker answered with, or ``status=None, reset=True`` when the stream ended
    after routing without any response (connection reset, upstream gone).
    """

    def allows(self, worker_id: str) -> bool: ...

    def record_outcome(
        self, worker_id: str, status: int | None, reset: bool
    ) -> None: ...


class Admission(Protocol):
    """Admits a request to a pool before routing.

    ``acquire`` is called after tokenization with the ``RoutingRequest`` (its
    ``headers`` carry API keys, its ``token_count`` the prompt size) and
    resolves, possibly after queueing, to a callable that releases the slot;
    the server calls it exactly once when the request ends. It may raise
    ``RateLimited`` or ``ServiceUnavailable``, which become 429 / 503.
    """

    def acquire(self, model: str, request: RoutingRequest) -> Awaitable[Release]: ...


class AllowAll:
    """The default ``WorkerFilter``: every worker allowed, outcomes ignored."""

    def allows(self, worker_id: str) -> bool:
        return True

    def record_outcome(self, worker_id: str, status: int | None, reset: bool) -> None:
        return None


def _nothing() -> None:
    return None


class AdmitAll:
    """The default ``Admission``: every request admitted at once."""

    async def acquire(self, model: str, request: RoutingRequest) -> Release:
        return _nothing
