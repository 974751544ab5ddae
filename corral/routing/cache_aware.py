"""``cache_aware``: send a request where its prompt prefix is already cached.

The decision follows the Shepherd Model Gateway's tree mode
(smg-project/smg, ``policies/cache_aware.rs``):

1. Match the prompt against the pool's tree. ``ratio`` = units matched by the
   deepest candidate holder / units in the request.
2. ``ratio > cache_threshold``: among the candidates holding that deepest match,
   the least loaded. Spill gate: if its score is above ``balance_rel_threshold``
   x the pool mean *and* above mean + ``balance_abs_threshold``, the globally
   least-loaded candidate serves instead (the prefix then gains a second holder).
3. Otherwise the globally least-loaded candidate, ties rotating across workers.
4. Record the prompt as cached on the primary.

Fallbacks: other candidates by (match length desc, load score asc).

Tokenized requests use a tree of 16-token blocks; untokenized ones a separate
tree of 64-character blocks of the routing text. Each tree is bounded by
``max_tree_blocks`` (LRU leaves evicted inline). Workers leave the trees when
``on_worker_removed`` is called, and also lazily, once absent from the
candidates for ``prune_absent_after_s``, so a worker that vanished without a
removal event does not keep tree space forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from corral.routing.base import Candidate, Decision, RoutingRequest
from corral.routing.blocks import text_blocks, token_blocks
from corral.routing.common import check_candidates, decide
from corral.routing.load import LoadScorer, argmin, fill_by_load
from corral.routing.params import ParamReader
from corral.routing.radix import BlockTree, Seq

logger = logging.getLogger(__name__)

DEFAULT_CACHE_THRESHOLD = 0.3
DEFAULT_ABS_THRESHOLD = 64.0
DEFAULT_REL_THRESHOLD = 1.5
DEFAULT_BLOCK_SIZE = 16
DEFAULT_TEXT_BLOCK_CHARS = 64
DEFAULT_MAX_TREE_BLOCKS = 2**21
DEFAULT_PRUNE_ABSENT_AFTER_S = 300.0
_PRUNE_CHECK_EVERY = 256
"""Decisions between two looks for absent tenants (each look is O(tenants))."""


class CacheAwarePolicy:
    name = "cache_aware"

    def __init__(
        self,
        *,
        cache_threshold: float = DEFAULT_CACHE_THRESHOLD,
        balance_abs_threshold: float = DEFAULT_ABS_THRESHOLD,
        balance_rel_threshold: float = DEFAULT_REL_THRESHOLD,
        block_size: int = DEFAULT_BLOCK_SIZE,
        text_block_chars: int = DEFAULT_TEXT_BLOCK_CHARS,
        max_tree_blocks: int = DEFAULT_MAX_TREE_BLOCKS,
        prune_absent_after_s: float = DEFAULT_PRUNE_ABSENT_AFTER_S,
        scorer: LoadScorer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.token_tree = BlockTree(block_size, max_tree_blocks)
        self.text_tree = BlockTree(text_block_chars, max_tree_blocks)
        self.prune_absent_after_s = prune_absent_after_s
        self._scorer = scorer or LoadScorer()
        self._clock = clock
        self._cursor = 0
        self._decisions = 0
        self._tenants: set[str] = set()
        self._absent_since: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<CacheAwarePolicy tokens={self.token_tree!r} text={self.text_tree!r}>"

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], max_workers: int
    ) -> Decision:
        limit = check_candidates(candidates, max_workers)
        n = len(candidates)
        start = self._cursor % n
        self._cursor = start + 1
        self._decisions += 1
        if self._decisions % _PRUNE_CHECK_EVERY == 0:
            self._prune_absent(candidates)
        scores = self._scorer.scores(candidates)

        tree, seq, units = self._sequence(request)
        matched: dict[int, int] = {}
        if seq:
            by_tenant = tree.tenant_matches(seq)
            if by_tenant:
                for i, candidate in enumerate(candidates):
                    length = by_tenant.get(candidate.worker.id)
                    if length is not None:
                        matched[i] = length

        best = max(matched.values()) if matched else 0
        if units and best / units > self.cache_threshold:
            primary = _least_of(
                [i for i, length in matched.items() if length == best], scores, start, n
            )
            mean = sum(scores) / n
            chosen = scores[primary]
            if (
                chosen > self.balance_rel_threshold * mean
                and chosen > mean + self.balance_abs_threshold
            ):
                primary = argmin(scores, start)
                reason = "cache_spill"
            else:
                reason = "cache_hit"
        else:
            primary = argmin(scores, start)
            reason = "cache_miss"

        order = [primary]
        if limit > 1:
            if matched:
                holders = sorted(
                    (i for i in matched if i != primary),
                    key=lambda i: (-matched[i], scores[i]),
                )
                order.extend(holders[: limit - 1])
            fill_by_load(order, scores, limit, start)
        if seq:
            worker_id = candidates[primary].worker.id
            tree.insert(seq, worker_id)
            self._tenants.add(worker_id)
        return decide(candidates, order, reason)

    def on_worker_removed(self, worker_id: str) -> None:
        self._forget(worker_id)

    # -- internals ----------------------------------------------------------

    def _sequence(self, request: RoutingRequest) -> tuple[BlockTree, Seq, int]:
        """The tree to use, the request cut to whole blocks, and its length in
        units (tokens or characters) for the match ratio."""
        tree = self.token_tree
        if request.tokens:
            packed = token_blocks(request.tokens, tree.block, tree.max_blocks)
            if packed is not None:
                return tree, packed, len(request.tokens)
        text = request.text or ""
        tree = self.text_tree
        return tree, text_blocks(text, tree.block, tree.max_blocks), len(text)

    def _forget(self, worker_id: str) -> None:
        removed = self.token_tree.remove_tenant(worker_id)
        removed += self.text_tree.remove_tenant(worker_id)
        self._tenants.discard(worker_id)
        self._absent_since.pop(worker_id, None)
        logger.info(
            "cache tree forgot worker %s (%d nodes removed)", worker_id, removed
        )

    def _prune_absent(self, candidates: Sequence[Candidate]) -> None:
        now = self._clock()
        present = {c.worker.id for c in candidates}
        for tenant in list(self._tenants):
            if tenant in present:
                self._absent_since.pop(tenant, None)
                continue
            since = self._absent_since.setdefault(tenant, now)
            if now - since >= self.prune_absent_after_s:
                self._forget(tenant)


def _least_of(indices: list[int], scores: Sequence[float], start: int, n: int) -> int:
    """The lowest-scored of ``indices``; ties go to the first reached from
    ``start``, so equally loaded holders share the work."""
    return min(indices, key=lambda i: (scores[i], (i - start) % n))


def build_cache_aware(params: Mapping[str, Any]) -> CacheAwarePolicy:
    reader = ParamReader("cache_aware", params)
    policy = CacheAwarePolicy(
        cache_threshold=reader.number(
            "cache_threshold", DEFAULT_CACHE_THRESHOLD, minimum=0, maximum=1
        ),
        balance_abs_threshold=reader.number(
            "balance_abs_threshold", DEFAULT_ABS_THRESHOLD, minimum=0
        ),
        balance_rel_threshold=reader.number(
            "balance_rel_threshold", DEFAULT_REL_THRESHOLD, minimum=1.0
        ),
        block_size=reader.integer(
            "block_size", DEFAULT_BLOCK_SIZE, minimum=1, maximum=4096
        ),
        text_block_chars=reader.integer(
            "text_block_chars", DEFAULT_TEXT_BLOCK_CHARS, minimum=1, maximum=65536
        ),
        max_tree_blocks=reader.integer(
            "max_tree_blocks", DEFAULT_MAX_TREE_BLOCKS, minimum=1, maximum=2**30
        ),
        prune_absent_after_s=reader.number(
            "prune_absent_after_s", DEFAULT_PRUNE_ABSENT_AFTER_S, above=0
        ),
        scorer=LoadScorer.from_params(reader),
    )
    reader.finish()
    return policy
