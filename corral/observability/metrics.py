"""Every Prometheus metric Corral exports, declared in one place.

Names carry their unit (``_seconds``, ``_total``); label sets are fixed and
bounded. Values that come from clients (model names, status codes) are bounded
before they become labels: a model label is only ever a configured pool name or
``other``, a status only a known HTTP status class member.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

_FAST_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
)
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

# -- membership (pool / discovery / health) ------------------------------------
WORKERS = Gauge(
    "corral_workers",
    "Workers per pool and health state.",
    ["model", "state"],
    registry=REGISTRY,
)
HEALTH_CHECKS = Counter(
    "corral_health_checks_total",
    "Active health check results.",
    ["result"],
    registry=REGISTRY,
)
KUBERNETES_WATCH_RESTARTS = Counter(
    "corral_kubernetes_watch_restarts_total",
    "Kubernetes pod watches started again, by reason (closed, expired, error).",
    ["reason"],
    registry=REGISTRY,
)

# -- xDS -----------------------------------------------------------------------
XDS_PUSHES = Counter(
    "corral_xds_pushes_total",
    "Discovery responses sent to Envoy.",
    ["type"],
    registry=REGISTRY,
)
XDS_ACKS = Counter(
    "corral_xds_acks_total",
    "Discovery responses Envoy accepted.",
    ["type"],
    registry=REGISTRY,
)
XDS_NACKS = Counter(
    "corral_xds_nacks_total",
    "Discovery responses Envoy rejected.",
    ["type"],
    registry=REGISTRY,
)
XDS_PUSH_LATENCY = Histogram(
    "corral_xds_push_ack_seconds",
    "Time from sending a discovery response to Envoy's ACK or NACK.",
    ["type"],
    buckets=(*_FAST_BUCKETS, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
XDS_STREAMS = Gauge(
    "corral_xds_streams",
    "Open ADS streams.",
    ["mode"],
    registry=REGISTRY,
)

# -- requests (ext_proc) ---------------------------------------------------------
REQUESTS = Counter(
    "corral_requests_total",
    "Requests seen by the picker, by outcome.",
    ["model", "worker", "status", "policy"],
    registry=REGISTRY,
)
DECISION_SECONDS = Histogram(
    "corral_routing_decision_seconds",
    "Time a routing policy took to pick.",
    ["policy"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
TOKENIZE_SECONDS = Histogram(
    "corral_tokenize_seconds",
    "Time to render and tokenize a prompt.",
    ["cache"],
    buckets=(*_FAST_BUCKETS, 0.5, 1.0),
    registry=REGISTRY,
)
TOKENIZER_CACHE = Counter(
    "corral_tokenizer_cache_total",
    "Tokenizer cache lookups by result.",
    ["level", "result"],
    registry=REGISTRY,
)
TTFT_SECONDS = Histogram(
    "corral_time_to_first_token_seconds",
    "Time to first token, as Envoy relayed it.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ITL_SECONDS = Histogram(
    "corral_inter_token_latency_seconds",
    "Time between streamed chunks.",
    ["model"],
    buckets=(*_FAST_BUCKETS, 0.5, 1.0),
    registry=REGISTRY,
)
E2E_SECONDS = Histogram(
    "corral_request_duration_seconds",
    "Request start to end of response.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
OUTPUT_TOKENS = Counter(
    "corral_output_tokens_total",
    "Completion tokens reported by workers.",
    ["model"],
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    "corral_prompt_tokens_total",
    "Prompt tokens reported by workers.",
    ["model"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "corral_worker_in_flight_requests",
    "Requests in flight per worker.",
    ["worker"],
    registry=REGISTRY,
)
ABORTS = Counter(
    "corral_requests_aborted_total",
    "Streams that ended without end of stream.",
    ["model"],
    registry=REGISTRY,
)

# -- resilience ------------------------------------------------------------------
BREAKER_STATE = Gauge(
    "corral_circuit_breaker_open",
    "1 while a worker's circuit breaker is open.",
    ["worker"],
    registry=REGISTRY,
)
ADMISSION = Counter(
    "corral_admission_total",
    "Admission control outcomes.",
    ["model", "result"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "corral_admission_queue_depth",
    "Requests waiting for admission.",
    ["model"],
    registry=REGISTRY,
)


def exposition() -> bytes:
    """The Prometheus text exposition of every metric above."""
    return generate_latest(REGISTRY)


def bounded_status(status: int) -> str:
    """A status code as a label: itself if it is a plausible HTTP status."""
    return str(status) if 100 <= status <= 599 else "other"
