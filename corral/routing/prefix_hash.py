"""``prefix_hash``: the prompt's head hashed onto the ring, with an overload escape.

Requests sharing their first ``prefix_tokens`` tokens (a system prompt, a
few-shot preamble) land on the same worker, whose engine keeps that prefix in
its KV cache. Without tokens the first ``4 * prefix_tokens`` characters stand in.
If the target is overloaded (score above ``load_factor`` x the pool mean *and*
above mean + ``balance_abs_threshold``) the least-loaded worker serves instead:
both tests must hold so that a nearly idle pool does not flap on small counts.
Defaults follow SMG (256 tokens, 1.25, 10).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral.routing.base import Candidate, Decision, RoutingRequest
from corral.routing.blocks import prefix_digest
from corral.routing.common import check_candidates, decide
from corral.routing.load import LoadScorer, argmin, fill_by_load
from corral.routing.params import ParamReader
from corral.routing.ring import DEFAULT_VIRTUAL_NODES, HashRing, ring_order

DEFAULT_PREFIX_TOKENS = 256
DEFAULT_LOAD_FACTOR = 1.25
DEFAULT_ABS_THRESHOLD = 10.0


class PrefixHashPolicy:
    name = "prefix_hash"

    def __init__(
        self,
        *,
        prefix_tokens: int = DEFAULT_PREFIX_TOKENS,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        balance_abs_threshold: float = DEFAULT_ABS_THRESHOLD,
        virtual_nodes: int = DEFAULT_VIRTUAL_NODES,
        scorer: LoadScorer | None = None,
    ) -> None:
        self.prefix_tokens = prefix_tokens
        self.load_factor = load_factor
        self.balance_abs_threshold = balance_abs_threshold
        self._ring = HashRing(virtual_nodes)
        self._scorer = scorer or LoadScorer()
        self._cursor = 0

    def __repr__(self) -> str:
        return f"<PrefixHashPolicy prefix_tokens={self.prefix_tokens} {self._ring!r}>"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], max_workers: int
    ) -> Decision:
        limit = check_candidates(candidates, max_workers)
        scores = self._scorer.scores(candidates)
        start = self._cursor % len(candidates)
        self._cursor = start + 1
        digest = prefix_digest(request.tokens, request.text, self.prefix_tokens)
        if digest is None:
            order = [argmin(scores, start)]
            return decide(
                candidates, fill_by_load(order, scores, limit, start), "no_prefix"
            )
        order = ring_order(self._ring, digest, candidates, limit)
        target = scores[order[0]]
        mean = sum(scores) / len(scores)
        if (
            target > self.load_factor * mean
            and target > mean + self.balance_abs_threshold
        ):
            order = [argmin(scores, start)]
            fill_by_load(order, scores, limit, start)
            return decide(candidates, order, "prefix_overload")
        return decide(candidates, order, "prefix_hash")

    def on_worker_removed(self, worker_id: str) -> None:
        self._ring.remove(worker_id)


def build_prefix_hash(params: Mapping[str, Any]) -> PrefixHashPolicy:
    reader = ParamReader("prefix_hash", params)
    policy = PrefixHashPolicy(
        prefix_tokens=reader.integer(
            "prefix_tokens", DEFAULT_PREFIX_TOKENS, minimum=1, maximum=1 << 20
        ),
        load_factor=reader.number("load_factor", DEFAULT_LOAD_FACTOR, minimum=1.0),
        balance_abs_threshold=reader.number(
            "balance_abs_threshold", DEFAULT_ABS_THRESHOLD, minimum=0
        ),
        virtual_nodes=reader.integer(
            "virtual_nodes", DEFAULT_VIRTUAL_NODES, minimum=1, maximum=10_000
        ),
        scorer=LoadScorer.from_params(reader),
    )
    reader.finish()
    return policy
