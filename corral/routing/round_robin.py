"""``round_robin``: candidates in turn; fallbacks by load score."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral.routing.base import Candidate, Decision, RoutingRequest
from corral.routing.common import check_candidates, decide
from corral.routing.load import LoadScorer, fill_by_load
from corral.routing.params import ParamReader


class RoundRobinPolicy:
    """Cycles over the candidates by position. The candidate list may change
    between calls (breakers open and close); the counter then simply continues
    modulo the new length, which keeps the spread even without tracking ids."""

    name = "round_robin"

    def __init__(self, scorer: LoadScorer | None = None) -> None:
        self._scorer = scorer or LoadScorer()
        self._next = 0

    def __repr__(self) -> str:
        return f"<RoundRobinPolicy next={self._next}>"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], max_workers: int
    ) -> Decision:
        limit = check_candidates(candidates, max_workers)
        primary = self._next % len(candidates)
        # Kept small so the counter never grows into a big integer.
        self._next = primary + 1
        order = [primary]
        if limit > 1:
            fill_by_load(order, self._scorer.scores(candidates), limit, primary + 1)
        return decide(candidates, order, "round_robin")

    def on_worker_removed(self, worker_id: str) -> None:
        """Position-based: nothing to forget."""


def build_round_robin(params: Mapping[str, Any]) -> RoundRobinPolicy:
    reader = ParamReader("round_robin", params)
    scorer = LoadScorer.from_params(reader)
    reader.finish()
    return RoundRobinPolicy(scorer)
