"""Summaries of a run: percentiles, rates, the workers' prefix-cache hit rate.

Percentiles use linear interpolation between closest ranks (the method numpy
calls ``linear``), so p50 of an even-sized sample is the mean of the two middle
values. A summary of no samples is ``None``, never zero, so a report cannot
mistake a failed run for a fast one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.client import RequestResult


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values``; ``None`` when empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Summary:
    requests: int
    ok: int
    errors: int
    unsent: int
    wall_s: float
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p90_ms: float | None
    itl_p99_ms: float | None
    e2e_p50_ms: float | None
    e2e_p90_ms: float | None
    e2e_p99_ms: float | None
    req_per_s: float
    out_tok_per_s: float
    hit_rate: float | None
    cpu_s: float | None
    cpu_ms_per_req: float | None
    peak_rss_mb: float | None
    first_error: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def summarize(
    results: Sequence[RequestResult],
    *,
    wall_s: float,
    unsent: int,
    hit_rate: float | None,
    cpu_s: float | None,
    peak_rss_bytes: int | None,
) -> Summary:
    """Figures of one run; ``cpu_s`` and RSS are ``None`` when no gateway ran."""
    good = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in good if r.ttft_s is not None]
    e2e = [r.e2e_s for r in good if r.e2e_s is not None]
    itl = [gap for r in good for gap in r.itl_s]
    out_tokens = sum(r.output_tokens for r in good)
    errors = [r for r in results if not r.ok]
    return Summary(
        requests=len(results),
        ok=len(good),
        errors=len(errors),
        unsent=unsent,
        wall_s=wall_s,
        ttft_p50_ms=_ms(percentile(ttft, 50)),
        ttft_p90_ms=_ms(percentile(ttft, 90)),
        ttft_p99_ms=_ms(percentile(ttft, 99)),
        itl_p50_ms=_ms(percentile(itl, 50)),
        itl_p90_ms=_ms(percentile(itl, 90)),
        itl_p99_ms=_ms(percentile(itl, 99)),
        e2e_p50_ms=_ms(percentile(e2e, 50)),
        e2e_p90_ms=_ms(percentile(e2e, 90)),
        e2e_p99_ms=_ms(percentile(e2e, 99)),
        req_per_s=len(good) / wall_s if wall_s > 0 else 0.0,
        out_tok_per_s=out_tokens / wall_s if wall_s > 0 else 0.0,
        hit_rate=hit_rate,
        cpu_s=cpu_s,
        cpu_ms_per_req=(
            cpu_s * 1000.0 / len(good) if good and cpu_s is not None else None
        ),
        peak_rss_mb=None if peak_rss_bytes is None else peak_rss_bytes / 2**20,
        first_error=(
            f"{errors[0].status} {errors[0].error}"[:160] if errors else ""
        ),
    )


# Counter pairs (hits, queries), in tokens, of the engines the simulator mimics:
# vLLM v1 exports prefix_cache_{hits,queries}_total; SGLang counts
# cached_tokens_total against prompt_tokens_total.
_COUNTER_PAIRS = (
    ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries"),
    ("sglang:cached_tokens", "sglang:prompt_tokens"),
)


def cache_counters(exposition: str) -> tuple[float, float] | None:
    """(hit tokens, queried tokens) from one worker's ``/metrics`` text."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            values[name] = values.get(name, 0.0) + float(sample.value)
    for hits, queries in _COUNTER_PAIRS:
        if hits in values and queries in values:
            return values[hits], values[queries]
    return None


def hit_rate_delta(
    before: Iterable[tuple[float, float] | None],
    after: Iterable[tuple[float, float] | None],
) -> float | None:
    """Hit rate over the run, summed over workers: delta hits / delta queries."""
    hits = queries = 0.0
    seen = False
    for start, end in zip(before, after, strict=True):
        if start is None or end is None:
            continue
        seen = True
        hits += end[0] - start[0]
        queries += end[1] - start[1]
    if not seen or queries <= 0:
        return None
    return hits / queries


# Histograms ``corral serve`` exports about its own work per request; the
# report shows their mean over a run to split Corral's added latency.
GATEWAY_TIMERS = {
    "tokenize": "corral_tokenize_seconds",
    "decision": "corral_routing_decision_seconds",
}


def histogram_totals(exposition: str) -> dict[str, tuple[float, float]]:
    """Timer name -> (sum of seconds, count) over all label sets."""
    wanted = {metric: name for name, metric in GATEWAY_TIMERS.items()}
    totals: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(exposition):
        name = wanted.get(family.name)
        if name is None:
            continue
        total, count = 0.0, 0.0
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total += float(sample.value)
            elif sample.name.endswith("_count"):
                count += float(sample.value)
        totals[name] = (total, count)
    return totals


def timer_means_ms(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Timer name -> mean milliseconds per observation during the run."""
    means = {}
    for name, (total, count) in after.items():
        start_total, start_count = before.get(name, (0.0, 0.0))
        if count > start_count:
            means[name] = 1000.0 * (total - start_total) / (count - start_count)
    return means
