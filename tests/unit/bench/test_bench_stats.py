"""The benchmark's figures: percentiles, hit-rate deltas, summaries, report maths."""

from __future__ import annotations

import pytest

from bench.client import RequestResult
from bench.report import added_latency, aggregate, goals, losses
from bench.stats import (
    cache_counters,
    histogram_totals,
    hit_rate_delta,
    percentile,
    summarize,
    timer_means_ms,
)

VLLM_METRICS = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 400.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 100.0
"""

SGLANG_METRICS = """\
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="m"} 50.0
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{model_name="m"} 20.0
"""


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 90, 4.6),
        ([3.0, 1.0, 2.0], 0, 1.0),
        ([3.0, 1.0, 2.0], 100, 3.0),
    ],
    ids=["single", "even-median", "p90-interpolated", "min", "max"],
)
def test_percentile_interpolates_between_closest_ranks(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_none_not_zero():
    assert percentile([], 50) is None


def test_percentile_rejects_out_of_range_quantiles():
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_cache_counters_read_vllm_and_sglang_names():
    assert cache_counters(VLLM_METRICS) == (100.0, 400.0)
    assert cache_counters(SGLANG_METRICS) == (20.0, 50.0)
    assert cache_counters("# nothing here\n") is None


def test_hit_rate_is_a_delta_summed_over_workers_skipping_unreadable_ones():
    before = [(10.0, 100.0), (0.0, 0.0), None]
    after = [(60.0, 200.0), (30.0, 100.0), (5.0, 5.0)]
    # (50 + 30) hits over (100 + 100) queried tokens; the third worker had no
    # reading before the run, so it cannot give a delta.
    assert hit_rate_delta(before, after) == pytest.approx(0.4)
    assert hit_rate_delta([None], [None]) is None
    assert hit_rate_delta([(1.0, 1.0)], [(1.0, 1.0)]) is None


def _result(ok: bool, ttft: float, e2e: float, itl: list[float], tokens: int):
    return RequestResult(ok=ok, status=200 if ok else 503, start=0.0, ttft_s=ttft,
                         e2e_s=e2e, itl_s=itl, output_tokens=tokens,
                         error="" if ok else "down")


def test_summary_counts_only_successful_requests_in_latency_and_rates():
    results = [
        _result(True, 0.1, 1.0, [0.01, 0.03], 3),
        _result(True, 0.3, 2.0, [0.02], 2),
        _result(False, 9.0, 9.0, [], 0),
    ]
    summary = summarize(results, wall_s=2.0, unsent=1, hit_rate=0.5, cpu_s=0.5,
                        peak_rss_bytes=3 * 2**20)
    assert (summary.requests, summary.ok, summary.errors, summary.unsent) == (
        3, 2, 1, 1)
    assert summary.ttft_p50_ms == pytest.approx(200.0)
    assert summary.itl_p50_ms == pytest.approx(20.0)
    assert summary.req_per_s == pytest.approx(1.0)
    assert summary.out_tok_per_s == pytest.approx(2.5)
    assert summary.cpu_ms_per_req == pytest.approx(250.0)
    assert summary.peak_rss_mb == pytest.approx(3.0)
    assert summary.first_error.startswith("503 down")


def test_summary_without_gateway_processes_reports_no_cost():
    summary = summarize([_result(True, 0.1, 0.1, [], 1)], wall_s=1.0, unsent=0,
                        hit_rate=None, cpu_s=None, peak_rss_bytes=None)
    assert summary.cpu_ms_per_req is None
    assert summary.peak_rss_mb is None


def _run(workload, contender, **figures):
    base = {"ttft_p50_ms": None, "e2e_p50_ms": None, "e2e_p90_ms": None,
            "hit_rate": None, "first_error": ""}
    base.update(figures)
    return {"workload": workload, "contender": contender, "summary": base}


def test_aggregate_takes_the_median_over_repeats():
    runs = [_run("short", "direct", e2e_p50_ms=v) for v in (40.0, 41.0, 90.0)]
    table = aggregate(runs)
    assert table[("short", "direct")]["e2e_p50_ms"] == 41.0
    assert table[("short", "direct")]["repeats"] == 3


def test_added_latency_subtracts_direct_on_the_short_workload():
    table = aggregate([
        _run("short", "direct", e2e_p50_ms=40.0),
        _run("short", "smg-cache_aware", e2e_p50_ms=40.7),
        _run("short", "corral-cache_aware", e2e_p50_ms=41.2),
        _run("shared_prefix", "corral-cache_aware", e2e_p50_ms=900.0),
    ])
    added = added_latency(table)
    assert added == pytest.approx({"smg-cache_aware": 0.7, "corral-cache_aware": 1.2})


def test_goals_state_reached_and_missed_with_the_numbers():
    table = aggregate([
        _run("shared_prefix", "corral-cache_aware", ttft_p50_ms=50.0, hit_rate=0.8),
        _run("shared_prefix", "smg-cache_aware", ttft_p50_ms=60.0, hit_rate=0.7),
        _run("multi_turn", "corral-cache_aware", ttft_p50_ms=70.0, hit_rate=0.6),
        _run("multi_turn", "smg-cache_aware", ttft_p50_ms=60.0, hit_rate=0.7),
        _run("short", "direct", e2e_p50_ms=40.0),
        _run("short", "smg-cache_aware", e2e_p50_ms=40.5),
        _run("short", "corral-cache_aware", e2e_p50_ms=42.0),
    ])
    text = "\n".join(goals(table))
    assert "**shared_prefix**" in text and "goal **reached**" in text
    assert "**multi_turn**" in text and "goal **not reached**" in text
    assert "gap +1.50 ms" in text and "**not reached**" in text
    lost = "\n".join(losses(table, ["multi_turn"]))
    assert "TTFT p50 70.00 vs 60.00" in lost
    assert "hit rate" in lost


CORRAL_METRICS = """\
# TYPE corral_tokenize_seconds histogram
corral_tokenize_seconds_bucket{cache="miss",le="+Inf"} 3.0
corral_tokenize_seconds_sum{cache="miss"} 0.003
corral_tokenize_seconds_count{cache="miss"} 3.0
corral_tokenize_seconds_bucket{cache="hit",le="+Inf"} 1.0
corral_tokenize_seconds_sum{cache="hit"} 0.001
corral_tokenize_seconds_count{cache="hit"} 1.0
# TYPE corral_routing_decision_seconds histogram
corral_routing_decision_seconds_bucket{policy="cache_aware",le="+Inf"} 4.0
corral_routing_decision_seconds_sum{policy="cache_aware"} 0.0004
corral_routing_decision_seconds_count{policy="cache_aware"} 4.0
"""


def test_gateway_timers_are_means_over_the_run_across_label_sets():
    after = histogram_totals(CORRAL_METRICS)
    assert after["tokenize"] == pytest.approx((0.004, 4.0))
    before = {"tokenize": (0.002, 2.0)}
    means = timer_means_ms(before, after)
    # (4 ms - 2 ms) over (4 - 2) observations; decisions had no earlier reading.
    assert means["tokenize"] == pytest.approx(1.0)
    assert means["decision"] == pytest.approx(0.1)
    assert timer_means_ms(after, after) == {}
