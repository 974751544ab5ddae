"""Active health checks: admit PENDING workers, move others between READY and NOT_READY.

Every ``interval_s`` each worker (except DRAINING ones) gets one probe, in its own
task, so one slow or hung worker costs only its own ``timeout_s`` and never
delays the probes of the others; a worker whose previous probe is still running
is skipped for that round. The probes share one ``aiohttp.ClientSession`` and at
most ``max_concurrency`` run at once.

State rules:

1. PENDING -> READY after one registration probe succeeds (``/health`` 2xx and
   ``/v1/models`` naming the worker's models, see ``probe.py``). PENDING workers
   are probed as soon as they appear in the registry, not at the next round.
2. READY -> NOT_READY after ``failure_threshold`` consecutive failed ``/health``
   probes.
3. NOT_READY -> READY after ``success_threshold`` consecutive successful
   registration probes (the worker may have restarted with another model).
   There is no terminal state: a NOT_READY worker is probed for as long as its
   source keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

import aiohttp

from corral.config.settings import HealthCheckConfig
from corral.discovery.probe import ProbeResult, probe_health, probe_registration
from corral.observability.metrics import HEALTH_CHECKS, WORKERS
from corral.pool import RegistrySnapshot, Worker, WorkerRegistry, WorkerState
from corral.pool.worker import ip_literal

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT_PROBES = 32
NO_MODEL_LABEL = "unknown"
"""``model`` label of the workers gauge for a worker that names no model yet."""


class HealthChecker:
    """Probes every worker of a registry and writes the results back to it."""

    def __init__(
        self,
        registry: WorkerRegistry,
        config: HealthCheckConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENT_PROBES,
    ) -> None:
        self._registry = registry
        self._config = config
        self._session = session
        self._limit = asyncio.Semaphore(max_concurrency)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._successes: dict[str, int] = {}
        self._last_reason: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return (
            f"<HealthChecker every={self._config.interval_s}s "
            f"in_flight={len(self._in_flight)}>"
        )

    async def run(self) -> None:
        """Probe until cancelled; also keeps the ``corral_workers`` gauge current."""
        self._loop = asyncio.get_running_loop()
        own_session = self._session is None
        session = self._session or aiohttp.ClientSession()
        self._session = session
        stop_gauge = track_workers_gauge(self._registry)
        unsubscribe = self._registry.subscribe(self._on_change)
        try:
            while True:
                self.check_all()
                await asyncio.sleep(self._config.interval_s)
        finally:
            unsubscribe()
            stop_gauge()
            tasks = list(self._in_flight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if own_session:
                await session.close()
                self._session = None

    def check_all(self) -> None:
        """Start a probe for every worker that has none running (one round)."""
        for worker in self._registry.snapshot().workers.values():
            self._start(worker)

    # -- internals ----------------------------------------------------------

    def _on_change(self, snapshot: RegistrySnapshot) -> None:
        # Runs inside registry mutations: only schedules, never awaits.
        for worker_id in list(self._failures.keys() | self._successes.keys()):
            if worker_id not in snapshot.workers:
                self._forget(worker_id)
        for worker in snapshot.workers.values():
            if worker.state is WorkerState.PENDING:
                self._start(worker)

    def _start(self, worker: Worker) -> None:
        if worker.state is WorkerState.DRAINING or self._loop is None:
            return
        running = self._in_flight.get(worker.id)
        if running is not None and not running.done():
            return
        task = self._loop.create_task(
            self._check(worker), name=f"corral-health-{worker.id}"
        )
        self._in_flight[worker.id] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._in_flight.get(worker.id) is finished:
                del self._in_flight[worker.id]

        task.add_done_callback(done)

    async def _check(self, worker: Worker) -> None:
        assert self._session is not None
        config = self._config
        if ip_literal(worker.host) is None:
            resolved = await resolve(worker.host, worker.port)
            current = self._registry.get(worker.id)
            if current is not None and current.url == worker.url:
                worker = self._registry.set_ip(worker.id, resolved) or worker
            if resolved is None:
                reason = f"{worker.host} does not resolve"
                self._apply(worker, ProbeResult(False, reason))
                return
        async with self._limit:
            if worker.state is WorkerState.READY:
                result = await probe_health(
                    self._session, worker, timeout_s=config.timeout_s, path=config.path
                )
            else:
                result = await probe_registration(
                    self._session, worker, timeout_s=config.timeout_s, path=config.path
                )
        self._apply(worker, result)

    def _apply(self, probed: Worker, result: ProbeResult) -> None:
        worker = self._registry.get(probed.id)
        if worker is None or worker.url != probed.url:
            return  # gone or moved while the probe ran; the result is moot
        if worker.state is WorkerState.DRAINING:
            return
        HEALTH_CHECKS.labels(result="success" if result.ok else "failure").inc()
        if result.ok:
            self._failures[worker.id] = 0
            self._successes[worker.id] = self._successes.get(worker.id, 0) + 1
            self._last_reason.pop(worker.id, None)
            if worker.state is WorkerState.PENDING or (
                worker.state is WorkerState.NOT_READY
                and self._successes[worker.id] >= self._config.success_threshold
            ):
                if result.models and result.models != worker.models:
                    self._registry.set_models(worker.id, result.models)
                self._registry.set_state(worker.id, WorkerState.READY)
            return
        self._successes[worker.id] = 0
        failures = self._failures.get(worker.id, 0) + 1
        self._failures[worker.id] = failures
        if worker.state is WorkerState.READY:
            if failures >= self._config.failure_threshold:
                logger.warning(
                    "worker %s failed %d health checks in a row (%s)",
                    worker.id,
                    failures,
                    result.reason,
                )
                self._registry.set_state(worker.id, WorkerState.NOT_READY)
            return
        if self._last_reason.get(worker.id) != result.reason:
            self._last_reason[worker.id] = result.reason
            logger.info(
                "worker %s stays %s: %s", worker.id, worker.state.value, result.reason
            )

    def _forget(self, worker_id: str) -> None:
        self._failures.pop(worker_id, None)
        self._successes.pop(worker_id, None)
        self._last_reason.pop(worker_id, None)


async def resolve(host: str, port: int) -> str | None:
    """The first address ``host`` resolves to (IPv4 first), or None."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )
    except OSError:
        return None
    addresses = [str(info[4][0]) for info in infos]
    ipv4 = [a for a in addresses if ":" not in a]
    preferred = ipv4 or addresses
    return preferred[0] if preferred else None


def track_workers_gauge(registry: WorkerRegistry) -> Callable[[], None]:
    """Keep ``corral_workers{model,state}`` equal to the registry's counts.

    Combinations that disappear are set to 0 rather than left at their last
    value. Returns a function that stops tracking.
    """
    published: set[tuple[str, str]] = set()

    def update(snapshot: RegistrySnapshot) -> None:
        counts: dict[tuple[str, str], int] = {}
        for worker in snapshot.workers.values():
            for model in worker.models or (NO_MODEL_LABEL,):
                key = (model, worker.state.value)
                counts[key] = counts.get(key, 0) + 1
        for key in published - counts.keys():
            WORKERS.labels(model=key[0], state=key[1]).set(0)
        for key, count in counts.items():
            WORKERS.labels(model=key[0], state=key[1]).set(count)
        published.clear()
        published.update(counts)

    update(registry.snapshot())
    return registry.subscribe(update)
