"""The worker registry: the one place where membership, health and load meet.

Discovery sources and health checks write to it; the xDS server and the ext_proc
server read from it. Readers get an immutable ``RegistrySnapshot``; writers call
the mutating methods, which all run on the event loop thread and notify listeners
synchronously after each change (listeners must be quick and must not raise; the
xDS server, for one, only schedules a push).

Load (``WorkerLoad``) is kept beside the snapshots, not in them: it changes on
every request and must not cost a snapshot rebuild.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from corral.pool.worker import Worker, WorkerLoad, WorkerState

logger = logging.getLogger(__name__)

Listener = Callable[["RegistrySnapshot"], None]


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """Membership at one moment. ``version`` grows by one per change."""

    version: int
    workers: Mapping[str, Worker]
    models: tuple[str, ...]
    """Every model the gateway serves: declared in config or named by a worker."""

    def pool(self, model: str) -> tuple[Worker, ...]:
        """All workers of a model's pool, in id order, whatever their state."""
        return tuple(w for _, w in sorted(self.workers.items()) if model in w.models)

    def ready(self, model: str) -> tuple[Worker, ...]:
        return tuple(w for w in self.pool(model) if w.ready)


class WorkerRegistry:
    """Live membership of every pool, with change notifications."""

    def __init__(self, declared_models: Iterable[str] = ()) -> None:
        self._declared = tuple(dict.fromkeys(declared_models))
        self._workers: dict[str, Worker] = {}
        self._loads: dict[str, WorkerLoad] = {}
        self._listeners: list[Listener] = []
        self._version = 0
        self._snapshot = self._build()
        self._pool_cache: dict[str, tuple[Worker, ...]] = {}

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for worker in self._workers.values():
            counts[worker.state.value] = counts.get(worker.state.value, 0) + 1
        return f"<WorkerRegistry version={self._version} {counts}>"

    # -- reading ------------------------------------------------------------

    def snapshot(self) -> RegistrySnapshot:
        return self._snapshot

    def get(self, worker_id: str) -> Worker | None:
        return self._workers.get(worker_id)

    def load(self, worker_id: str) -> WorkerLoad:
        """The live load record of a worker (a detached one if it is gone)."""
        load = self._loads.get(worker_id)
        return load if load is not None else WorkerLoad()

    def loads(self) -> Mapping[str, WorkerLoad]:
        return MappingProxyType(self._loads)

    def ready_workers(self, model: str) -> tuple[Worker, ...]:
        """READY workers of one pool; cached per snapshot version (hot path)."""
        cached = self._pool_cache.get(model)
        if cached is None:
            cached = self._snapshot.ready(model)
            self._pool_cache[model] = cached
        return cached

    def find_by_address(self, address: str) -> Worker | None:
        for worker in self._workers.values():
            if worker.address == address:
                return worker
        return None

    # -- writing ------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(snapshot)`` after every change; returns an unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def declare_models(self, models: Iterable[str]) -> None:
        merged = tuple(dict.fromkeys((*self._declared, *models)))
        if merged != self._declared:
            self._declared = merged
            self._changed()

    def upsert(self, worker: Worker) -> Worker:
        """Add a worker, or update one with the same id.

        An update keeps the current health state unless the address changed, in
        which case the worker is probed again from PENDING. A worker its source
        does not admit is NOT_READY; admitted again, it is probed from PENDING.
        """
        current = self._workers.get(worker.id)
        if current is not None:
            if worker.ip is None and current.host == worker.host:
                worker = replace(worker, ip=current.ip)
            if current.address == worker.address:
                worker = replace(worker, state=current.state)
            readmitted = not current.admitted and worker.admitted
            if readmitted and worker.state is WorkerState.NOT_READY:
                # Admitted again: probe afresh before it takes traffic.
                worker = replace(worker, state=WorkerState.PENDING)
        if not worker.admitted and worker.state in (
            WorkerState.READY,
            WorkerState.PENDING,
        ):
            worker = replace(worker, state=WorkerState.NOT_READY)
        if current is not None and worker == current:
            return current
        self._workers[worker.id] = worker
        self._loads.setdefault(worker.id, WorkerLoad())
        if current is None:
            logger.info(
                "worker added: %s %s models=%s role=%s source=%s",
                worker.id,
                worker.url,
                ",".join(worker.models) or "-",
                worker.role.value,
                worker.source,
            )
        self._changed()
        return worker

    def set_state(self, worker_id: str, state: WorkerState) -> Worker | None:
        current = self._workers.get(worker_id)
        if current is None or current.state is state:
            return current
        if current.state is WorkerState.DRAINING and state is not WorkerState.DRAINING:
            # A draining worker only leaves; health results no longer move it.
            return current
        if state is WorkerState.READY and (not current.admitted or current.ip is None):
            # Its source holds it out (a pod that is not Ready), or its name has
            # not resolved to an address Envoy can dial.
            return current
        updated = replace(current, state=state)
        self._workers[worker_id] = updated
        logger.info("worker %s: %s -> %s", worker_id, current.state.value, state.value)
        self._changed()
        return updated

    def set_ip(self, worker_id: str, ip: str | None) -> Worker | None:
        """Record what a worker's host name resolved to (None: it no longer
        resolves, which takes the worker out of rotation)."""
        current = self._workers.get(worker_id)
        if current is None or current.ip == ip:
            return current
        updated = replace(current, ip=ip)
        if ip is None and current.state is WorkerState.READY:
            updated = replace(updated, state=WorkerState.NOT_READY)
        self._workers[worker_id] = updated
        logger.info("worker %s: %s resolves to %s", worker_id, current.host, ip or "-")
        self._changed()
        return updated

    def set_models(self, worker_id: str, models: tuple[str, ...]) -> Worker | None:
        current = self._workers.get(worker_id)
        if current is None or current.models == models:
            return current
        updated = replace(current, models=models)
        self._workers[worker_id] = updated
        logger.info("worker %s serves %s", worker_id, ",".join(models) or "-")
        self._changed()
        return updated

    def remove(self, worker_id: str) -> Worker | None:
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return None
        self._loads.pop(worker_id, None)
        logger.info("worker removed: %s (%s)", worker_id, worker.source)
        self._changed()
        return worker

    def workers_from(self, source: str) -> dict[str, Worker]:
        return {i: w for i, w in self._workers.items() if w.source == source}

    # -- internals ----------------------------------------------------------

    def _build(self) -> RegistrySnapshot:
        named = (m for w in self._workers.values() for m in w.models)
        models = tuple(dict.fromkeys((*self._declared, *sorted(set(named)))))
        return RegistrySnapshot(
            version=self._version,
            workers=MappingProxyType(dict(self._workers)),
            models=models,
        )

    def _changed(self) -> None:
        self._version += 1
        self._snapshot = self._build()
        self._pool_cache = {}
        for listener in list(self._listeners):
            try:
                listener(self._snapshot)
            except Exception:
                logger.exception("registry listener %r failed", listener)
