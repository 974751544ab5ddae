"""``random``: a uniformly random primary; fallbacks by load score."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from corral.routing.base import Candidate, Decision, RoutingRequest
from corral.routing.common import check_candidates, decide
from corral.routing.load import LoadScorer, fill_by_load
from corral.routing.params import ParamReader


class RandomPolicy:
    """Uniform choice among the candidates. ``seed`` makes runs repeatable."""

    name = "random"

    def __init__(
        self, scorer: LoadScorer | None = None, seed: int | None = None
    ) -> None:
        self._scorer = scorer or LoadScorer()
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return "<RandomPolicy>"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], max_workers: int
    ) -> Decision:
        limit = check_candidates(candidates, max_workers)
        primary = self._rng.randrange(len(candidates))
        order = [primary]
        if limit > 1:
            scores = self._scorer.scores(candidates)
            fill_by_load(order, scores, limit, primary + 1)
        return decide(candidates, order, "random")

    def on_worker_removed(self, worker_id: str) -> None:
        """Stateless: nothing to forget."""


def build_random(params: Mapping[str, Any]) -> RandomPolicy:
    reader = ParamReader("random", params)
    scorer = LoadScorer.from_params(reader)
    seed = reader.optional_integer("seed")
    reader.finish()
    return RandomPolicy(scorer, seed)
