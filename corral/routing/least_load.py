"""``least_load``: the candidate with the lowest load score.

Equal scores are common (an idle pool scores all zeros); always taking the first
of them would pin one replica, as SMG users saw with replica 0. The scan starts
at a position that advances on every decision, so ties rotate across workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral.routing.base import Candidate, Decision, RoutingRequest
from corral.routing.common import check_candidates, decide
from corral.routing.load import LoadScorer, argmin, fill_by_load
from corral.routing.params import ParamReader


class LeastLoadPolicy:
    name = "least_load"

    def __init__(self, scorer: LoadScorer | None = None) -> None:
        self._scorer = scorer or LoadScorer()
        self._cursor = 0

    def __repr__(self) -> str:
        return f"<LeastLoadPolicy cursor={self._cursor}>"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], max_workers: int
    ) -> Decision:
        limit = check_candidates(candidates, max_workers)
        start = self._cursor % len(candidates)
        self._cursor = start + 1
        scores = self._scorer.scores(candidates)
        order = [argmin(scores, start)]
        if limit > 1:
            fill_by_load(order, scores, limit, start)
        return decide(candidates, order, "least_load")

    def on_worker_removed(self, worker_id: str) -> None:
        """Stateless apart from the tie cursor: nothing to forget."""


def build_least_load(params: Mapping[str, Any]) -> LeastLoadPolicy:
    reader = ParamReader("least_load", params)
    scorer = LoadScorer.from_params(reader)
    reader.finish()
    return LeastLoadPolicy(scorer)
