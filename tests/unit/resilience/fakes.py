"""Small stand-ins for the worker registry, through the resilience ``PoolView``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeWorker:
    id: str
    models: tuple[str, ...]
    ready: bool = True


@dataclass
class FakeLoad:
    engine_waiting: float | None = None
    engine_kv_usage: float | None = None
    engine_updated_at: float = 0.0

    def engine_fresh(self, max_age_s: float, now: float | None = None) -> bool:
        assert now is not None
        return self.engine_updated_at > 0 and now - self.engine_updated_at <= max_age_s


@dataclass
class FakeSnapshot:
    workers: Mapping[str, Any]


@dataclass
class FakeRegistry:
    workers: dict[str, FakeWorker] = field(default_factory=dict)
    loads: dict[str, FakeLoad] = field(default_factory=dict)
    listeners: list[Callable[[Any], None]] = field(default_factory=list)

    def add(self, worker_id: str, *models: str, ready: bool = True) -> None:
        self.workers[worker_id] = FakeWorker(worker_id, models or ("m",), ready)
        self.loads[worker_id] = FakeLoad()
        self._notify()

    def remove(self, worker_id: str) -> None:
        self.workers.pop(worker_id)
        self._notify()

    def get(self, worker_id: str) -> FakeWorker | None:
        return self.workers.get(worker_id)

    def ready_workers(self, model: str) -> tuple[FakeWorker, ...]:
        return tuple(
            w for _, w in sorted(self.workers.items()) if w.ready and model in w.models
        )

    def load(self, worker_id: str) -> FakeLoad:
        return self.loads.get(worker_id, FakeLoad())

    def subscribe(self, listener: Callable[[Any], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener(FakeSnapshot(dict(self.workers)))
