"""Prometheus metrics of one simulated worker, under the engines' own names.

Names and labels follow what vLLM (V1 engine) and SGLang export, since the
gateway and other routers scrape them by name. Each worker has its own
``CollectorRegistry`` because several workers can share one process.
"""

from __future__ import annotations

import logging
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from corral.simulator.config import SimConfig

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
# SGLang's cache_hit_rate is a recent average; this many requests make it up.
_HIT_RATE_WINDOW = 64


class SimMetrics:
    """Records the engine's load and each request's timings for ``/metrics``."""

    def __init__(self, config: SimConfig) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.engine = config.engine
        self._model = config.model
        self._recent: deque[tuple[int, int]] = deque(maxlen=_HIT_RATE_WINDOW)
        if config.engine == "vllm":
            self._build_vllm(config)
        else:
            self._build_sglang(config)

    def _labels(self) -> dict[str, str]:
        if self.engine == "vllm":
            return {"model_name": self._model, "engine": "0"}
        return {"model_name": self._model}

    def _build_vllm(self, config: SimConfig) -> None:
        names = ["model_name", "engine"]
        r = self.registry
        labels = self._labels()
        self._running = Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            names,
            registry=r,
        ).labels(**labels)
        self._waiting = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            names,
            registry=r,
        ).labels(**labels)
        self._usage = Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            names,
            registry=r,
        ).labels(**labels)
        self._queries = Counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            names,
            registry=r,
        ).labels(**labels)
        self._hits = Counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            names,
            registry=r,
        ).labels(**labels)
        info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            ["block_size", "num_gpu_blocks", "enable_prefix_caching", "cache_dtype"],
            registry=r,
        )
        info.labels(
            block_size=str(config.block_size),
            num_gpu_blocks=str(config.num_blocks),
            enable_prefix_caching="True",
            cache_dtype="auto",
        ).set(1)
        self._prompt_tokens = Counter(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            names,
            registry=r,
        ).labels(**labels)
        self._gen_tokens = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            names,
            registry=r,
        ).labels(**labels)
        self._success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=r,
        )
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            names,
            buckets=_TTFT_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            names,
            buckets=_ITL_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            names,
            buckets=_E2E_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            names,
            buckets=_E2E_BUCKETS,
            registry=r,
        ).labels(**labels)

    def _build_sglang(self, config: SimConfig) -> None:
        names = ["model_name"]
        r = self.registry
        labels = self._labels()
        self._running = Gauge(
            "sglang:num_running_reqs",
            "The number of running requests.",
            names,
            registry=r,
        ).labels(**labels)
        self._waiting = Gauge(
            "sglang:num_queue_reqs",
            "The number of requests in the waiting queue.",
            names,
            registry=r,
        ).labels(**labels)
        self._usage = Gauge(
            "sglang:token_usage", "The token usage.", names, registry=r
        ).labels(**labels)
        self._hit_rate = Gauge(
            "sglang:cache_hit_rate", "The prefix cache hit rate.", names, registry=r
        ).labels(**labels)
        Gauge(
            "sglang:max_total_num_tokens",
            "Maximum total number of tokens in the KV cache.",
            names,
            registry=r,
        ).labels(**labels).set(config.num_blocks * config.block_size)
        info = Gauge(
            "sglang:cache_config_info",
            "Information of the KV cache configuration.",
            ["page_size", "num_pages"],
            registry=r,
        )
        info.labels(
            page_size=str(config.block_size), num_pages=str(config.num_blocks)
        ).set(1)
        self._queries = Counter(
            "sglang:prompt_tokens",
            "Number of prefill tokens processed.",
            names,
            registry=r,
        ).labels(**labels)
        self._prompt_tokens = self._queries
        self._hits = Counter(
            "sglang:cached_tokens", "Number of cached prompt tokens.", names, registry=r
        ).labels(**labels)
        self._gen_tokens = Counter(
            "sglang:generation_tokens",
            "Number of generation tokens processed.",
            names,
            registry=r,
        ).labels(**labels)
        self._success = Counter(
            "sglang:num_requests", "Number of requests processed.", names, registry=r
        )
        self._ttft = Histogram(
            "sglang:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            names,
            buckets=_TTFT_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._itl = Histogram(
            "sglang:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            names,
            buckets=_ITL_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._e2e = Histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds.",
            names,
            buckets=_E2E_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._queue = Histogram(
            "sglang:queue_time_seconds",
            "Histogram of queueing time in seconds.",
            names,
            buckets=_E2E_BUCKETS,
            registry=r,
        ).labels(**labels)

    # The engine's LoadListener.
    def set_load(self, running: int, waiting: int, kv_usage: float) -> None:
        self._running.set(running)
        self._waiting.set(waiting)
        self._usage.set(kv_usage)

    def prefix_lookup(self, queries: int, hits: int) -> None:
        if self.engine == "vllm":
            # vLLM counts prefix queries and hits in tokens, per scheduled request.
            self._queries.inc(queries)
            self._prompt_tokens.inc(queries)
        else:
            self._queries.inc(queries)
            self._recent.append((queries, hits))
            total = sum(q for q, _ in self._recent)
            self._hit_rate.set(sum(h for _, h in self._recent) / total if total else 0)
        self._hits.inc(hits)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def generated(self, tokens: int) -> None:
        self._gen_tokens.inc(tokens)

    def finished(self, reason: str, e2e_s: float, queue_s: float) -> None:
        """A request that ran to its end (aborted ones are not counted)."""
        if self.engine == "vllm":
            self._success.labels(**self._labels(), finished_reason=reason).inc()
        else:
            self._success.labels(**self._labels()).inc()
        self._e2e.observe(e2e_s)
        self._queue.observe(queue_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
