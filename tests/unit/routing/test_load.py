from __future__ import annotations

import pytest

from corral.pool import WorkerLoad
from corral.routing import LoadScorer
from corral.routing.load import argmin, fill_by_load

from .pool import candidate

NOW = 1000.0

SCORES = [
    ("idle", WorkerLoad(), 0.0),
    ("in_flight", WorkerLoad(requests=3), 3.0),
    ("tokens", WorkerLoad(requests=1, tokens=2048), 3.0),
    (
        "fresh_waiting",
        WorkerLoad(requests=1, engine_waiting=4, engine_updated_at=NOW - 1),
        5.0,
    ),
    (
        "stale_waiting_ignored",
        WorkerLoad(requests=1, engine_waiting=4, engine_updated_at=NOW - 60),
        1.0,
    ),
    (
        "running_beyond_own",
        WorkerLoad(requests=2, engine_running=5, engine_updated_at=NOW),
        5.0,
    ),
    (
        "running_within_own",
        WorkerLoad(requests=5, engine_running=2, engine_updated_at=NOW),
        5.0,
    ),
    (
        "kv_half_full",
        WorkerLoad(engine_kv_usage=0.5, engine_updated_at=NOW),
        1.0,
    ),
    (
        "kv_full_capped",
        WorkerLoad(engine_kv_usage=1.0, engine_updated_at=NOW),
        99.0,
    ),
    (
        "never_read",
        WorkerLoad(requests=2, engine_waiting=9, engine_updated_at=0.0),
        2.0,
    ),
]


@pytest.mark.parametrize(
    ("load", "expected"),
    [(load, e) for _, load, e in SCORES],
    ids=[n for n, _, _ in SCORES],
)
def test_score_combines_gateway_and_fresh_engine_readings(load, expected):
    scorer = LoadScorer(stale_after_s=5.0, tokens_per_request=1024, kv_weight=1.0)
    assert scorer.score(candidate(0, load), now=NOW) == pytest.approx(expected)


def test_scorer_reads_the_clock_when_no_time_is_given():
    scorer = LoadScorer(clock=lambda: NOW)
    fresh = candidate(0, WorkerLoad(engine_waiting=2, engine_updated_at=NOW - 1))
    assert scorer.scores([fresh]) == [2.0]


ARGMIN = [
    ("unique_minimum", [3.0, 1.0, 2.0], 0, 1),
    ("tie_from_start_0", [1.0, 1.0, 1.0], 0, 0),
    ("tie_from_start_2", [1.0, 1.0, 1.0], 2, 2),
    ("tie_wraps", [0.0, 5.0, 0.0], 1, 2),
    ("start_beyond_length_wraps", [1.0, 0.0], 3, 1),
]


@pytest.mark.parametrize(
    ("scores", "start", "expected"),
    [(s, st, e) for _, s, st, e in ARGMIN],
    ids=[n for n, *_ in ARGMIN],
)
def test_argmin_breaks_ties_from_the_rotating_start(scores, start, expected):
    assert argmin(scores, start) == expected


FILL = [
    ("lowest_two", [], [5.0, 1.0, 3.0, 2.0], 2, 0, [1, 3]),
    ("skips_chosen", [1], [5.0, 1.0, 3.0, 2.0], 3, 0, [1, 3, 2]),
    ("limit_beyond_pool", [0], [1.0, 2.0], 5, 0, [0, 1]),
    ("ties_follow_start", [], [0.0, 0.0, 0.0, 0.0], 2, 2, [2, 3]),
    ("already_full", [3, 2], [0.0, 0.0, 0.0, 0.0], 2, 0, [3, 2]),
]


@pytest.mark.parametrize(
    ("chosen", "scores", "limit", "start", "expected"),
    [case[1:] for case in FILL],
    ids=[case[0] for case in FILL],
)
def test_fill_by_load_appends_the_lowest_scored_rest(
    chosen, scores, limit, start, expected
):
    assert fill_by_load(list(chosen), scores, limit, start) == expected
