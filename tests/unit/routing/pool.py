"""Candidate pools for the routing tests, built the way the registry builds them."""

from __future__ import annotations

import dataclasses

from corral.pool import WorkerLoad, WorkerState, make_worker
from corral.routing import Candidate


def candidate(index: int, load: WorkerLoad | None = None) -> Candidate:
    worker = make_worker(f"http://127.0.0.1:{9000 + index}", models=("m",))
    worker = dataclasses.replace(worker, state=WorkerState.READY)
    return Candidate(worker, load if load is not None else WorkerLoad())


def pool(size: int, requests: list[int] | None = None) -> list[Candidate]:
    """``size`` idle candidates, or with the given in-flight request counts."""
    counts = requests if requests is not None else [0] * size
    return [candidate(i, WorkerLoad(requests=counts[i])) for i in range(size)]


def ids(candidates: list[Candidate]) -> list[str]:
    return [c.id for c in candidates]
