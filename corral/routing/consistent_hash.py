"""``consistent_hash``: a session key placed on a ring of virtual nodes.

The key is ``RoutingRequest.routing_key``, which the ext_proc server copies from
the header named by the ``header`` parameter (default ``x-session-id``); the
parameter is validated here and read there. A request without a key goes to the
least-loaded candidate. 150 virtual nodes per worker, as SMG uses, keep each
worker's share within a few percent of 1/N.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral.routing.base import Candidate, Decision, RoutingRequest
from corral.routing.blocks import stable_hash_text
from corral.routing.common import check_candidates, decide
from corral.routing.load import LoadScorer, argmin, fill_by_load
from corral.routing.params import ParamReader
from corral.routing.ring import DEFAULT_VIRTUAL_NODES, HashRing, ring_order

DEFAULT_HEADER = "x-session-id"


class ConsistentHashPolicy:
    name = "consistent_hash"

    def __init__(
        self,
        *,
        header: str = DEFAULT_HEADER,
        virtual_nodes: int = DEFAULT_VIRTUAL_NODES,
        scorer: LoadScorer | None = None,
    ) -> None:
        self.header = header.lower()
        """The request header the ext_proc server takes ``routing_key`` from."""
        self._ring = HashRing(virtual_nodes)
        self._scorer = scorer or LoadScorer()
        self._cursor = 0

    def __repr__(self) -> str:
        return f"<ConsistentHashPolicy header={self.header} {self._ring!r}>"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], max_workers: int
    ) -> Decision:
        limit = check_candidates(candidates, max_workers)
        key = request.routing_key
        if not key:
            start = self._cursor % len(candidates)
            self._cursor = start + 1
            scores = self._scorer.scores(candidates)
            order = [argmin(scores, start)]
            fill_by_load(order, scores, limit, start)
            return decide(candidates, order, "hash_no_key")
        order = ring_order(self._ring, stable_hash_text(key), candidates, limit)
        return decide(candidates, order, "hash")

    def on_worker_removed(self, worker_id: str) -> None:
        self._ring.remove(worker_id)


def build_consistent_hash(params: Mapping[str, Any]) -> ConsistentHashPolicy:
    reader = ParamReader("consistent_hash", params)
    header = reader.string("header", DEFAULT_HEADER)
    virtual_nodes = reader.integer(
        "virtual_nodes", DEFAULT_VIRTUAL_NODES, minimum=1, maximum=10_000
    )
    scorer = LoadScorer.from_params(reader)
    reader.finish()
    return ConsistentHashPolicy(
        header=header, virtual_nodes=virtual_nodes, scorer=scorer
    )
