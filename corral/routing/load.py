"""The one load score every load-aware policy uses, and cheap selection by it.

A worker's score is an estimate of how much work stands before a new request,
counted in request equivalents (lower is better)::

    score = requests                          gateway in-flight requests
          + tokens / tokens_per_request       their prompt tokens, as requests
          + waiting                           engine queue         (fresh only)
          + max(0, running - requests)        engine work from elsewhere (fresh)
          + kv_weight * k / (1 - k)           KV-cache pressure, k = usage (fresh)

The gateway's own counters are exact and current; the engine's readings arrive
by polling and lag, so they are only used while ``WorkerLoad.engine_fresh`` says
they are younger than ``stale_after_s``: a stale reading (a worker whose metrics
endpoint stopped answering) must not keep steering traffic. ``running`` already
includes what this gateway sent, so only the excess over ``requests`` is added.
The KV term grows without bound as the cache fills, as in the Shepherd Model
Gateway's least_load score (``policies/least_load.rs``), with ``k`` capped below 1.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from typing import Any

from corral.routing.base import Candidate
from corral.routing.params import ParamReader

DEFAULT_STALE_AFTER_S = 5.0
DEFAULT_TOKENS_PER_REQUEST = 1024.0
DEFAULT_KV_WEIGHT = 1.0
_KV_CAP = 0.99


class LoadScorer:
    """Scores candidates; one instance per policy, configured from its params."""

    __slots__ = ("_clock", "kv_weight", "stale_after_s", "tokens_per_request")

    def __init__(
        self,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        tokens_per_request: float = DEFAULT_TOKENS_PER_REQUEST,
        kv_weight: float = DEFAULT_KV_WEIGHT,
        clock: Any = time.monotonic,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.tokens_per_request = tokens_per_request
        self.kv_weight = kv_weight
        self._clock = clock

    @classmethod
    def from_params(cls, reader: ParamReader) -> LoadScorer:
        """Reads ``stale_after_s``, ``tokens_per_request`` and ``kv_weight``."""
        return cls(
            stale_after_s=reader.number(
                "stale_after_s", DEFAULT_STALE_AFTER_S, above=0
            ),
            tokens_per_request=reader.number(
                "tokens_per_request", DEFAULT_TOKENS_PER_REQUEST, above=0
            ),
            kv_weight=reader.number("kv_weight", DEFAULT_KV_WEIGHT, minimum=0),
        )

    def score(self, candidate: Candidate, now: float | None = None) -> float:
        """The score of one candidate (see the module docstring)."""
        return self.scores((candidate,), now)[0]

    def scores(
        self, candidates: Sequence[Candidate], now: float | None = None
    ) -> list[float]:
        """Scores of every candidate, in order. One pass, one clock read: this
        runs on every decision, so the loop body stays free of calls."""
        if now is None:
            now = self._clock()
        fresh_since = now - self.stale_after_s
        per_request = 1.0 / self.tokens_per_request
        kv_weight = self.kv_weight
        out: list[float] = []
        append = out.append
        for candidate in candidates:
            load = candidate.load
            requests = load.requests
            value = requests + load.tokens * per_request
            updated = load.engine_updated_at
            if updated > 0 and updated >= fresh_since:
                waiting = load.engine_waiting
                if waiting:
                    value += waiting
                running = load.engine_running
                if running and running > requests:
                    value += running - requests
                kv = load.engine_kv_usage
                if kv and kv_weight:
                    kv = _KV_CAP if kv > _KV_CAP else kv
                    value += kv_weight * kv / (1.0 - kv)
            append(value)
        return out


def argmin(scores: Sequence[float], start: int = 0) -> int:
    """Index of the lowest score; among equal ones, the first at or after
    ``start`` (wrapping). Rotating ``start`` spreads ties instead of always
    favouring the first worker (SMG saw replica 0 pinned that way).

    ``min`` and ``index`` scan in C, which matters with hundreds of workers."""
    low = min(scores)
    try:
        return scores.index(low, start % len(scores))
    except ValueError:
        return scores.index(low)


def fill_by_load(
    chosen: list[int], scores: Sequence[float], limit: int, start: int = 0
) -> list[int]:
    """Append to ``chosen`` the lowest-scored indices not already in it until it
    holds ``limit`` (or every index). Ties go to the index reached first from
    ``start``, wrapping.

    ``limit`` is small (the caller's ``max_workers``) while a pool may hold
    hundreds of workers, so this finds the few smallest values and then locates
    their indices with C-level scans, rather than sorting the workers."""
    n = len(scores)
    limit = min(limit, n)
    if len(chosen) >= limit:
        return chosen
    taken = set(chosen)
    # Enough values to fill the gap even if every taken index is among them.
    wanted = limit - len(chosen) + len(taken)
    values = sorted(scores)[:wanted] if n <= 256 else heapq.nsmallest(wanted, scores)
    start %= n
    previous: float | None = None
    for value in values:
        if value == previous:
            continue
        previous = value
        for low, high in ((start, n), (0, start)):
            pos = low
            while pos < high:
                try:
                    i = scores.index(value, pos, high)
                except ValueError:
                    break
                pos = i + 1
                if i not in taken:
                    chosen.append(i)
                    taken.add(i)
                    if len(chosen) >= limit:
                        return chosen
    return chosen
