"""The narrow view of the worker registry that resilience code reads.

``corral.pool.WorkerRegistry`` satisfies ``PoolView``; declaring only what is
used keeps breakers and admission testable with a small fake and free of any
import-time dependency on the registry's module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol


class WorkerView(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def models(self) -> tuple[str, ...]: ...


class LoadView(Protocol):
    """A worker's live load (``corral.pool.WorkerLoad``): engine readings only."""

    @property
    def engine_waiting(self) -> float | None: ...

    @property
    def engine_kv_usage(self) -> float | None: ...

    def engine_fresh(self, max_age_s: float, now: float | None = None) -> bool: ...


class SnapshotView(Protocol):
    @property
    def workers(self) -> Mapping[str, Any]: ...


class PoolView(Protocol):
    """Membership and load as the registry hands them out (event loop thread)."""

    def get(self, worker_id: str) -> WorkerView | None: ...

    def ready_workers(self, model: str) -> Sequence[WorkerView]: ...

    def load(self, worker_id: str) -> LoadView: ...

    def subscribe(
        self, listener: Callable[[SnapshotView], None]
    ) -> Callable[[], None]: ...
