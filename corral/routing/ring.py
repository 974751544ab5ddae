"""A consistent-hash ring of virtual nodes, shared by the hash policies.

Each worker owns ``virtual_nodes`` points on a 64-bit ring (the stable digest of
``"<worker id>#<i>"``); a key belongs to the first point clockwise from its own
digest. Adding or removing one of N workers therefore moves only the keys of the
arcs it gains or loses, about 1/N of them (Karger et al., "Consistent hashing
and random trees", STOC 1997).

The ring holds every worker it has seen, not only the current candidates: the
caller filters out workers whose breaker is open, and rebuilding the ring for
every subset would both cost milliseconds and reshuffle keys. A lookup walks
clockwise past points whose worker is not a candidate, so a key whose worker is
briefly out lands on its ring successor and comes back when the worker does.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

from corral.routing.base import Candidate
from corral.routing.blocks import stable_hash_text

logger = logging.getLogger(__name__)

DEFAULT_VIRTUAL_NODES = 150
_MIN_RETAINED = 64
"""Members a ring keeps without candidates before it rebuilds (see ``sync``)."""


class HashRing:
    """Sorted virtual-node points, rebuilt only when membership changes."""

    __slots__ = ("_members", "_owners", "_points", "virtual_nodes")

    def __init__(self, virtual_nodes: int = DEFAULT_VIRTUAL_NODES) -> None:
        self.virtual_nodes = virtual_nodes
        self._members: set[str] = set()
        self._points: list[int] = []
        self._owners: list[str] = []

    def __repr__(self) -> str:
        return f"<HashRing members={len(self._members)} points={len(self._points)}>"

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._members

    def sync(self, candidate_ids: AbstractSet[str]) -> None:
        """Add candidates the ring lacks. Members that are not candidates stay
        (they may be briefly filtered out), unless they outnumber the candidates
        fourfold: then the ring is rebuilt from the candidates alone, which keeps
        its size bounded when workers leave without ``remove`` being called."""
        members = self._members
        bound = max(_MIN_RETAINED, 4 * len(candidate_ids))
        if members.issuperset(candidate_ids):
            # The usual case: nothing to add, and no allocation on the hot path.
            if len(members) - len(candidate_ids) <= bound:
                return
            self._members = set(candidate_ids)
        else:
            merged = members | set(candidate_ids)
            if len(merged) - len(candidate_ids) > bound:
                merged = set(candidate_ids)
            self._members = merged
        self._rebuild()

    def remove(self, worker_id: str) -> None:
        if worker_id in self._members:
            self._members.discard(worker_id)
            self._rebuild()

    def walk(self, digest: int, eligible: Mapping[str, int], limit: int) -> list[int]:
        """Up to ``limit`` distinct values of ``eligible`` (candidate indices by
        worker id), for members met clockwise from ``digest``."""
        points = self._points
        total = len(points)
        # Every candidate is a member once ``sync`` ran, so the walk ends as soon
        # as ``limit`` of them are found instead of circling the whole ring.
        limit = min(limit, len(eligible))
        if total == 0 or limit <= 0:
            return []
        owners = self._owners
        found: list[int] = []
        pos = bisect_left(points, digest)
        for step in range(total):
            i = pos + step
            if i >= total:
                i -= total
            index = eligible.get(owners[i])
            if index is not None and index not in found:
                found.append(index)
                if len(found) >= limit:
                    break
        return found

    def _rebuild(self) -> None:
        pairs = sorted(
            (stable_hash_text(f"{member}#{n}"), member)
            for member in self._members
            for n in range(self.virtual_nodes)
        )
        self._points = [point for point, _ in pairs]
        self._owners = [owner for _, owner in pairs]
        logger.debug("hash ring rebuilt: %d members", len(self._members))


def ring_order(
    ring: HashRing, digest: int, candidates: Sequence[Candidate], limit: int
) -> list[int]:
    """Candidate indices for ``digest``: its owner first, then ring successors.

    Fallbacks follow the ring rather than load, so a retried request for a key
    lands on the same second worker every time and finds its cache there."""
    eligible = {c.worker.id: i for i, c in enumerate(candidates)}
    ring.sync(eligible.keys())
    return ring.walk(digest, eligible, limit)
