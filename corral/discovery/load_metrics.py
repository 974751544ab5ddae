"""Engine load polling: read each READY worker's own Prometheus ``/metrics``.

The gateway counts what it has in flight on each worker; the engine knows more
(requests queued from other gateways, KV-cache fill). This module reads those
numbers into ``WorkerLoad.engine_*``. Names read, by engine (the same table as
the Gateway API Inference Extension model server protocol,
https://github.com/kubernetes-sigs/gateway-api-inference-extension/tree/main/docs/proposals/003-model-server-protocol):

    reading           vLLM                                   SGLang
    running requests  vllm:num_requests_running              sglang:num_running_reqs
    waiting requests  vllm:num_requests_waiting              sglang:num_queue_reqs
    KV use (0..1)     vllm:kv_cache_usage_perc               sglang:token_usage
                      (before vLLM 0.10: vllm:gpu_cache_usage_perc)

Request counts are summed over label sets (one per engine or data-parallel rank);
KV use is averaged over them, since a fraction summed over engines would exceed 1.
A failed poll keeps the previous reading; readers judge its age with
``WorkerLoad.engine_fresh(stale_after_s)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from corral.config.settings import LoadMetricsConfig
from corral.pool import Worker, WorkerRegistry

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
DEFAULT_MAX_CONCURRENT_POLLS = 32

_RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
_WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
_KV_USAGE = (
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
)


@dataclass(frozen=True, slots=True)
class EngineReading:
    """One scrape's numbers; a field is None when the engine did not export it."""

    running: float | None
    waiting: float | None
    kv_usage: float | None


def parse_engine_metrics(text: str) -> EngineReading | None:
    """Read the load numbers out of Prometheus text; None if none are present.

    Raises ``ValueError`` when the text is not Prometheus exposition format.
    """
    samples: dict[str, list[float]] = {}
    wanted = {*_RUNNING, *_WAITING, *_KV_USAGE}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                samples.setdefault(sample.name, []).append(float(sample.value))
    running = _first(samples, _RUNNING, sum)
    waiting = _first(samples, _WAITING, sum)
    kv_usage = _first(samples, _KV_USAGE, _mean)
    if running is None and waiting is None and kv_usage is None:
        return None
    return EngineReading(running, waiting, kv_usage)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _first(
    samples: dict[str, list[float]],
    names: Iterable[str],
    fold: Callable[[list[float]], float],
) -> float | None:
    # The first name present wins: an engine exports one of them, and a vLLM
    # that still exports both KV names reports the same value under each.
    for name in names:
        values = samples.get(name)
        if values:
            return float(fold(values))
    return None


class EngineLoadPoller:
    """Every ``interval_s``, scrapes each READY worker and stores what it read.

    Each worker is scraped in its own task with the round's interval as timeout,
    so a slow worker never delays the others; a worker still being scraped is
    skipped for that round. Disabled configs (``enabled: false``) make ``run``
    return at once.
    """

    def __init__(
        self,
        registry: WorkerRegistry,
        config: LoadMetricsConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENT_POLLS,
    ) -> None:
        self._registry = registry
        self._config = config
        self._session = session
        self._limit = asyncio.Semaphore(max_concurrency)
        self._in_flight: dict[str, asyncio.Task[bool]] = {}
        self._failing: set[str] = set()

    def __repr__(self) -> str:
        return f"<EngineLoadPoller every={self._config.interval_s}s>"

    async def run(self) -> None:
        if not self._config.enabled:
            logger.info("engine load polling is disabled")
            return
        own_session = self._session is None
        session = self._session or aiohttp.ClientSession()
        self._session = session
        try:
            while True:
                self.poll_all()
                await asyncio.sleep(self._config.interval_s)
        finally:
            tasks = list(self._in_flight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if own_session:
                await session.close()
                self._session = None

    def poll_all(self) -> list[asyncio.Task[bool]]:
        """Start one scrape per READY worker not already being scraped."""
        started: list[asyncio.Task[bool]] = []
        for worker in self._registry.snapshot().workers.values():
            if not worker.ready:
                continue
            running = self._in_flight.get(worker.id)
            if running is not None and not running.done():
                continue
            task = asyncio.get_running_loop().create_task(
                self.poll_worker(worker), name=f"corral-load-{worker.id}"
            )
            self._in_flight[worker.id] = task
            task.add_done_callback(self._finished)
            started.append(task)
        return started

    def _finished(self, task: asyncio.Task[bool]) -> None:
        for worker_id, running in list(self._in_flight.items()):
            if running is task:
                del self._in_flight[worker_id]

    async def poll_worker(self, worker: Worker) -> bool:
        """Scrape one worker; True if a reading was stored."""
        if self._session is None:
            raise RuntimeError("poll_worker needs a session: call run() or pass one")
        try:
            async with self._limit:
                text = await self._fetch(self._session, worker)
            reading = parse_engine_metrics(text)
            if reading is None:
                raise ValueError("no vLLM or SGLang load metrics in the answer")
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            if worker.id not in self._failing:
                self._failing.add(worker.id)
                logger.info(
                    "engine metrics of %s unavailable (%s); its last reading will go "
                    "stale",
                    worker.id,
                    str(exc) or type(exc).__name__,
                )
            return False
        if self._registry.get(worker.id) is None:
            return False
        self._failing.discard(worker.id)
        load = self._registry.load(worker.id)
        load.engine_running = reading.running
        load.engine_waiting = reading.waiting
        load.engine_kv_usage = reading.kv_usage
        load.engine_updated_at = time.monotonic()
        return True

    async def _fetch(self, session: aiohttp.ClientSession, worker: Worker) -> str:
        timeout = aiohttp.ClientTimeout(total=self._config.interval_s)
        async with session.get(
            worker.dial_url + METRICS_PATH, timeout=timeout, allow_redirects=False
        ) as response:
            text = await response.text(errors="replace")
            if not 200 <= response.status < 300:
                raise ValueError(f"{METRICS_PATH} answered {response.status}")
            return text
