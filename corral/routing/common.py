"""Small pieces every policy shares: building a ``Decision`` from indices."""

from __future__ import annotations

from collections.abc import Sequence

from corral.errors import NoHealthyWorker
from corral.routing.base import Candidate, Decision


def check_candidates(candidates: Sequence[Candidate], max_workers: int) -> int:
    """How many workers a decision may name: at least one, at most all.

    The caller promises at least one candidate; an empty pool is still answered
    with the error the client should see rather than an ``IndexError``."""
    if not candidates:
        raise NoHealthyWorker("no eligible worker for this request")
    return max(1, min(max_workers, len(candidates)))


def decide(
    candidates: Sequence[Candidate], order: Sequence[int], reason: str
) -> Decision:
    """A decision naming ``candidates[i]`` for each index of ``order`` (distinct,
    primary first)."""
    return Decision(tuple(candidates[i].worker for i in order), reason)


def id_index(candidates: Sequence[Candidate]) -> dict[str, int]:
    """Candidate index by worker id."""
    return {c.worker.id: i for i, c in enumerate(candidates)}
