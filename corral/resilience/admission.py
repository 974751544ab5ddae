"""Admission control: the ext_proc ``Admission`` hook.

``AdmissionController.acquire(model, request)`` runs three checks, cheapest and
most final first, and returns the callable that releases what the request holds:

1. Overload shedding. When every READY worker of the pool has a fresh engine
   reading (younger than ``load_metrics.stale_after_s``) at or over a threshold
   (``shed_waiting_threshold`` waiting requests, or ``shed_kv_usage_threshold`` KV
   cache usage), the request is refused with **503**
   ``worker_overload_protection_shed`` and ``Retry-After: 1``. 503, as SMG answers
   the same case, because the shortage is the pool's, not the client's quota; a
   worker without a fresh reading counts as not overloaded (no shedding on
   missing data).
2. Rate limits per API key or tenant (``ratelimit.py``): **429** with a
   ``Retry-After`` computed from the bucket.
3. Concurrency per pool (``queue.py``): a slot, or a place in a bounded FIFO
   queue; **429** ``admission_queue_full`` or **503** ``admission_queue_timeout``.
   A refusal here gives the rate-limit charge back.

With nothing configured (the default) every check is off and ``acquire`` returns
at once without allocating anything per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import MappingProxyType

from corral.config.settings import AdmissionConfig, LoadMetricsConfig
from corral.errors import GatewayError, ServiceUnavailable
from corral.observability.metrics import ADMISSION
from corral.resilience.queue import ConcurrencyLimiter, Release
from corral.resilience.ratelimit import Clock, RateLimiter
from corral.resilience.views import PoolView

logger = logging.getLogger(__name__)

SHED_RETRY_AFTER_S = 1
_APPROX_CHARS_PER_TOKEN = 4


def _noop() -> None:
    return None


class AdmissionController:
    """Admission for every pool; one instance per gateway, shared by all streams."""

    def __init__(
        self,
        config: AdmissionConfig | None = None,
        *,
        registry: PoolView | None = None,
        load_metrics: LoadMetricsConfig | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._config = config or AdmissionConfig()
        self._registry = registry
        self._stale_after_s = (load_metrics or LoadMetricsConfig()).stale_after_s
        self._clock = clock
        self._rate = RateLimiter(self._config, clock=clock)
        self._pools: dict[str, ConcurrencyLimiter] = {}
        self._shedding = registry is not None and (
            self._config.shed_waiting_threshold is not None
            or self._config.shed_kv_usage_threshold is not None
        )

    def __repr__(self) -> str:
        return (
            f"<AdmissionController max_concurrent={self._config.max_concurrent} "
            f"rate_limit={self._rate.enabled} shedding={self._shedding} "
            f"pools={list(self._pools.values())}>"
        )

    @property
    def active(self) -> bool:
        """False when every check is off (the defaults)."""
        return (
            self._shedding
            or self._rate.enabled
            or self._config.max_concurrent is not None
        )

    def limiter(self, model: str) -> ConcurrencyLimiter | None:
        """The pool's concurrency limiter, or ``None`` when concurrency is unlimited."""
        if self._config.max_concurrent is None:
            return None
        limiter = self._pools.get(model)
        if limiter is None:
            limiter = self._pools[model] = ConcurrencyLimiter(
                model,
                limit=self._config.max_concurrent,
                queue_size=self._config.queue_size,
                timeout_s=self._config.queue_timeout_s,
            )
        return limiter

    async def acquire(
        self,
        model: str,
        request: object,
        headers: Mapping[str, str] | None = None,
    ) -> Release:
        """Admit one request to ``model``'s pool, waiting in its queue if needed.

        ``request`` is the parsed request (``corral.openai.requests.ParsedRequest``
        or a ``corral.routing.RoutingRequest``); its prompt size is what the
        token rate limit charges. ``headers`` (lower-cased names) carry the API
        key or tenant; when not given, ``request.headers`` is used if it exists.
        Without either, every request shares the anonymous rate-limit key.

        Returns the release callable (idempotent; call it when the response ends,
        fails, or the client goes away). Raises ``RateLimited`` (429) or
        ``ServiceUnavailable`` (503), each with ``retry_after_s`` set. Cancelling
        the awaiting task takes the request out of the queue.
        """
        if not self.active:
            return _noop
        if self._shedding:
            self._check_overload(model)
        charge = None
        if self._rate.enabled:
            try:
                charge = self._rate.charge(
                    _headers_of(request, headers), prompt_tokens(request)
                )
            except GatewayError:
                ADMISSION.labels(model, "rate_limited").inc()
                raise
        limiter = self.limiter(model)
        if limiter is None:
            ADMISSION.labels(model, "admitted").inc()
            return _noop
        try:
            release = await limiter.acquire()
        except BaseException:
            if charge is not None:
                self._rate.refund(charge)
            raise
        ADMISSION.labels(model, "admitted").inc()
        return release

    def _check_overload(self, model: str) -> None:
        assert self._registry is not None
        workers = self._registry.ready_workers(model)
        if not workers:
            return  # no candidate at all is the picker's 503, not a shed
        now = self._clock()
        waiting_limit = self._config.shed_waiting_threshold
        kv_limit = self._config.shed_kv_usage_threshold
        for worker in workers:
            load = self._registry.load(worker.id)
            if not load.engine_fresh(self._stale_after_s, now):
                return
            waiting = load.engine_waiting
            kv = load.engine_kv_usage
            over = (
                waiting_limit is not None
                and waiting is not None
                and waiting >= waiting_limit
            ) or (kv_limit is not None and kv is not None and kv >= kv_limit)
            if not over:
                return
        ADMISSION.labels(model, "shed").inc()
        logger.warning("shedding a request for %s: every worker is overloaded", model)
        raise ServiceUnavailable(
            f"Every worker serving model {model} is overloaded; retry shortly.",
            code="worker_overload_protection_shed",
            retry_after_s=SHED_RETRY_AFTER_S,
        )


def prompt_tokens(request: object) -> int:
    """The prompt size a request is charged: its token count when known
    (``token_count`` or ``token_ids``), else its text length / 4."""
    count = getattr(request, "token_count", 0)
    if isinstance(count, int) and count > 0:
        return count
    token_ids = getattr(request, "token_ids", None) or getattr(request, "tokens", None)
    if token_ids:
        return len(token_ids)
    for name in ("text", "routing_text"):
        text = getattr(request, name, None)
        if isinstance(text, str) and text:
            return len(text) // _APPROX_CHARS_PER_TOKEN
    return 0


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def _headers_of(
    request: object, headers: Mapping[str, str] | None
) -> Mapping[str, str]:
    if headers is not None:
        return headers
    found = getattr(request, "headers", None)
    return found if isinstance(found, Mapping) else _NO_HEADERS
