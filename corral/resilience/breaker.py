"""Per-worker circuit breakers, fed by the outcomes the ext_proc server observes.

Each worker has one breaker with three states:

    CLOSED     traffic flows; ``failure_threshold`` consecutive failures open it
    OPEN       no traffic until ``open_duration_s`` has passed since it opened
    HALF_OPEN  at most ``half_open_max_requests`` probes at a time;
               ``success_threshold`` consecutive successes close it, one failure
               opens it again for another ``open_duration_s``

What counts (``classify``): a 5xx status, a reset or no status at all (timeout,
connect failure) is a failure; 2xx and 3xx are successes; 429 and the other 4xx
are neither, since they describe the request or the client's quota, not the
worker's health. This matches how SMG samples outcomes (429 is "no sample").

Fail soft: a breaker must never be the reason a whole pool is refused. When every
READY worker of a pool that a worker serves is refused by its breaker, the one
whose breaker opened longest ago is allowed anyway (it is the one closest to its
half-open probe, and choosing it deterministically spreads nothing onto workers
that failed more recently). That needs the registry, so fail soft only applies
when one is given.

The class implements the ext_proc ``WorkerFilter`` hook: ``allows`` and
``record_outcome``. Everything runs on the event loop thread; nothing awaits.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from corral.config.settings import CircuitBreakerConfig
from corral.observability.metrics import BREAKER_STATE
from corral.resilience.views import PoolView, SnapshotView

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


def classify(status: int | None, reset: bool) -> Outcome:
    """How one observed response counts for the breaker of the worker that sent it."""
    if reset or status is None or status >= 500:
        return Outcome.FAILURE
    if 200 <= status < 400:
        return Outcome.SUCCESS
    return Outcome.NEUTRAL


@dataclass(slots=True)
class _Breaker:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    successes: int = 0
    opened_at: float = 0.0
    probes: list[float] | None = None
    """Start times of the half-open probes still outstanding."""


class CircuitBreakers:
    """The breakers of every worker, keyed by worker id.

    ``probe_timeout_s`` bounds how long a half-open probe slot stays taken when no
    outcome arrives for it (``allows`` is asked for every candidate, and the policy
    may pick another worker, so a slot can be reserved for a request that never
    reaches this worker). It defaults to ``open_duration_s``.
    """

    def __init__(
        self,
        config: CircuitBreakerConfig | None = None,
        *,
        registry: PoolView | None = None,
        clock: Clock = time.monotonic,
        probe_timeout_s: float | None = None,
    ) -> None:
        self._config = config or CircuitBreakerConfig()
        self._registry = registry
        self._clock = clock
        self._probe_timeout = (
            probe_timeout_s
            if probe_timeout_s is not None
            else self._config.open_duration_s
        )
        self._breakers: dict[str, _Breaker] = {}
        self._unsubscribe: Callable[[], None] | None = None
        if registry is not None:
            self._unsubscribe = registry.subscribe(self._on_membership)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for breaker in self._breakers.values():
            counts[breaker.state.value] = counts.get(breaker.state.value, 0) + 1
        return f"<CircuitBreakers enabled={self._config.enabled} {counts}>"

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def state(self, worker_id: str) -> BreakerState:
        """The state as of now (an OPEN breaker past its duration reads HALF_OPEN)."""
        breaker = self._breakers.get(worker_id)
        if breaker is None:
            return BreakerState.CLOSED
        self._advance(worker_id, breaker, self._clock())
        return breaker.state

    # -- the WorkerFilter hook ------------------------------------------------

    def allows(self, worker_id: str) -> bool:
        """May a new request go to this worker? Takes a probe slot when HALF_OPEN.

        Unknown workers are allowed (nothing has failed yet). When the breakers
        are disabled every worker is allowed.
        """
        if not self._config.enabled:
            return True
        breaker = self._breakers.get(worker_id)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return True
        now = self._clock()
        self._advance(worker_id, breaker, now)
        if breaker.state is BreakerState.HALF_OPEN and self._probe_slot(
            worker_id, breaker, now, take=True
        ):
            return True
        return self._fail_soft(worker_id, now)

    def record_outcome(self, worker_id: str, status: int | None, reset: bool) -> None:
        """Count one response (``status``) or a reset / timeout (``status=None``)."""
        if not self._config.enabled:
            return
        outcome = classify(status, reset)
        breaker = self._breakers.get(worker_id)
        if breaker is None:
            if outcome is not Outcome.FAILURE:
                return  # the common case: a healthy worker costs no state
            breaker = self._breakers[worker_id] = _Breaker()
        now = self._clock()
        self._advance(worker_id, breaker, now)
        if breaker.state is BreakerState.CLOSED:
            if outcome is Outcome.FAILURE:
                breaker.failures += 1
                if breaker.failures >= self._config.failure_threshold:
                    self._open(worker_id, breaker, now)
            elif outcome is Outcome.SUCCESS:
                breaker.failures = 0
                del self._breakers[worker_id]
        elif breaker.state is BreakerState.HALF_OPEN:
            if breaker.probes:
                breaker.probes.pop(0)
            if outcome is Outcome.FAILURE:
                self._open(worker_id, breaker, now)
            elif outcome is Outcome.SUCCESS:
                breaker.successes += 1
                if breaker.successes >= self._config.success_threshold:
                    self._close(worker_id)
        # OPEN: outcomes of requests sent before it opened change nothing; the
        # timer alone decides when probing starts.

    def forget(self, worker_id: str) -> None:
        """Drop a worker's breaker (it left the registry)."""
        self._breakers.pop(worker_id, None)
        # A breaker that never opened was never exported: nothing to remove.
        with contextlib.suppress(KeyError):
            BREAKER_STATE.remove(worker_id)

    def close(self) -> None:
        """Stop following the registry."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- internals ------------------------------------------------------------

    def _advance(self, worker_id: str, breaker: _Breaker, now: float) -> None:
        if (
            breaker.state is BreakerState.OPEN
            and now - breaker.opened_at >= self._config.open_duration_s
        ):
            breaker.state = BreakerState.HALF_OPEN
            breaker.successes = 0
            breaker.probes = []
            logger.info("circuit breaker of %s half-open: probing", worker_id)

    def _probe_slot(
        self, worker_id: str, breaker: _Breaker, now: float, *, take: bool
    ) -> bool:
        """Is a half-open probe slot free (and, with ``take``, reserve it)?

        With a registry, the probes in flight are the requests the gateway has
        in flight on the worker (``WorkerLoad.requests``, charged the moment the
        policy picks it). ``allows`` is asked for every candidate before the
        policy picks, so a reservation made there is mostly for a request that
        goes elsewhere; counting real requests instead means a recovered worker
        is probed by the first request that is actually sent to it. Without a
        registry (or a load without that count), slots are reserved and expire
        after ``probe_timeout_s``.
        """
        if self._registry is not None:
            in_flight = getattr(self._registry.load(worker_id), "requests", None)
            if isinstance(in_flight, int):
                return in_flight < self._config.half_open_max_requests
        if take:
            return self._take_probe(breaker, now)
        return self._probe_free(breaker, now)

    def _take_probe(self, breaker: _Breaker, now: float) -> bool:
        probes = breaker.probes if breaker.probes is not None else []
        probes[:] = [t for t in probes if now - t < self._probe_timeout]
        breaker.probes = probes
        if len(probes) >= self._config.half_open_max_requests:
            return False
        probes.append(now)
        return True

    def _open(self, worker_id: str, breaker: _Breaker, now: float) -> None:
        reopened = breaker.state is BreakerState.HALF_OPEN
        breaker.state = BreakerState.OPEN
        breaker.opened_at = now
        breaker.failures = 0
        breaker.successes = 0
        breaker.probes = None
        BREAKER_STATE.labels(worker_id).set(1)
        logger.warning(
            "circuit breaker of %s %s for %.1fs",
            worker_id,
            "re-opened" if reopened else "opened",
            self._config.open_duration_s,
        )

    def _close(self, worker_id: str) -> None:
        del self._breakers[worker_id]
        BREAKER_STATE.labels(worker_id).set(0)
        logger.info("circuit breaker of %s closed", worker_id)

    def _fail_soft(self, worker_id: str, now: float) -> bool:
        """Allow a refused worker if it is its pool's last resort (module docstring)."""
        if self._registry is None:
            return False
        worker = self._registry.get(worker_id)
        if worker is None:
            return False
        for model in worker.models:
            refused: list[tuple[float, str]] = []
            for peer in self._registry.ready_workers(model):
                peer_breaker = self._breakers.get(peer.id)
                if peer_breaker is None or peer_breaker.state is BreakerState.CLOSED:
                    break  # someone in this pool can take the traffic
                self._advance(peer.id, peer_breaker, now)
                if (
                    peer.id != worker_id
                    and peer_breaker.state is BreakerState.HALF_OPEN
                    and self._probe_slot(peer.id, peer_breaker, now, take=False)
                ):
                    break
                refused.append((peer_breaker.opened_at, peer.id))
            else:
                if refused and min(refused)[1] == worker_id:
                    logger.debug(
                        "every breaker of pool %s open; %s fails soft", model, worker_id
                    )
                    return True
        return False

    def _probe_free(self, breaker: _Breaker, now: float) -> bool:
        probes = breaker.probes or []
        live = sum(1 for t in probes if now - t < self._probe_timeout)
        return live < self._config.half_open_max_requests

    def _on_membership(self, snapshot: SnapshotView) -> None:
        for worker_id in [w for w in self._breakers if w not in snapshot.workers]:
            self.forget(worker_id)
