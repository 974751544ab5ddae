"""``power_of_two``: two distinct random candidates, the less loaded one wins.

Sampling two and keeping the better gives most of the benefit of a full scan at
constant cost (Mitzenmacher, "The Power of Two Choices in Randomized Load
Balancing", 2001). Fallbacks: the other sampled worker, then by load score.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from corral.routing.base import Candidate, Decision, RoutingRequest
from corral.routing.common import check_candidates, decide
from corral.routing.load import LoadScorer, fill_by_load
from corral.routing.params import ParamReader


class PowerOfTwoPolicy:
    name = "power_of_two"

    def __init__(
        self, scorer: LoadScorer | None = None, seed: int | None = None
    ) -> None:
        self._scorer = scorer or LoadScorer()
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return "<PowerOfTwoPolicy>"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], max_workers: int
    ) -> Decision:
        limit = check_candidates(candidates, max_workers)
        n = len(candidates)
        if n == 1:
            return decide(candidates, [0], "power_of_two")
        first = self._rng.randrange(n)
        second = self._rng.randrange(n - 1)
        if second >= first:
            second += 1
        scorer = self._scorer
        if limit <= 2:
            a = scorer.score(candidates[first])
            b = scorer.score(candidates[second])
            order = [first, second] if a <= b else [second, first]
            return decide(candidates, order[:limit], "power_of_two")
        scores = scorer.scores(candidates)
        order = [first, second] if scores[first] <= scores[second] else [second, first]
        fill_by_load(order, scores, limit, first + 1)
        return decide(candidates, order, "power_of_two")

    def on_worker_removed(self, worker_id: str) -> None:
        """Stateless: nothing to forget."""


def build_power_of_two(params: Mapping[str, Any]) -> PowerOfTwoPolicy:
    reader = ParamReader("power_of_two", params)
    scorer = LoadScorer.from_params(reader)
    seed = reader.optional_integer("seed")
    reader.finish()
    return PowerOfTwoPolicy(scorer, seed)
