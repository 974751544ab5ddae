"""The discovery contract, and the one way a source writes its members.

A source (static config, a watched file, Kubernetes) knows the set of workers it
wants; ``sync_source`` turns that set into registry changes. Sources never add or
remove workers one by one, so a source that restarts and syncs again converges to
the same registry (level-triggered, not edge-triggered).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from corral.config.settings import StaticWorker
from corral.discovery.drain import cancel_drain, start_drain
from corral.pool import Worker, WorkerRegistry, WorkerState, make_worker

logger = logging.getLogger(__name__)

DEFAULT_DRAIN_TIMEOUT_S = 30.0


@runtime_checkable
class DiscoverySource(Protocol):
    """Something that keeps the registry's workers of one source up to date.

    ``name`` is the value written into ``Worker.source``; two sources never share
    one. ``run()`` runs on the event loop until cancelled. It never raises for bad
    input (an unreadable file, a malformed entry, an API error): it logs, keeps
    the last good membership and tries again later. Cancellation leaves the
    registry as it is; the workers stay until a later sync says otherwise.
    """

    name: str

    async def run(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one ``sync_source`` call changed, by worker id."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    draining: tuple[str, ...] = ()
    skipped: tuple[str, ...] = field(default=())
    """Wanted, but the id already belongs to another source."""

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.draining)


def worker_from_spec(spec: StaticWorker, source: str) -> Worker:
    """Build a PENDING worker from a declared entry (config, manifest or API).

    ``model`` and ``models`` are merged, in that order, without duplicates.
    Raises ``InvalidRequest`` for a bad URL or role.
    """
    models = tuple(dict.fromkeys([*([spec.model] if spec.model else []), *spec.models]))
    return make_worker(
        spec.url,
        models=models,
        role=spec.role,
        labels=spec.labels,
        source=source,
        bootstrap_port=spec.bootstrap_port,
    )


def sync_source(
    registry: WorkerRegistry,
    source_name: str,
    workers: Iterable[Worker],
    *,
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
) -> SyncResult:
    """Make the registry's workers of ``source_name`` exactly ``workers``.

    New ids are added PENDING (health checks admit them); ids whose declaration
    changed are updated in place (the registry keeps their health state unless
    the address moved); ids no longer wanted are drained in the background and
    then removed. Cases worth naming:

    1. A worker declared without models keeps the models its ``/v1/models``
       answer gave it, instead of being reset to none on every sync.
    2. A wanted worker that is still DRAINING from an earlier sync is taken
       back: its drain is cancelled and it is re-added PENDING, to be probed again.
    3. An id that another source already owns is left alone and reported in
       ``skipped``: the first source to claim an address keeps it.

    Must be called on the event loop thread (drains are tasks on that loop).
    """
    added: list[str] = []
    updated: list[str] = []
    skipped: list[str] = []
    wanted: dict[str, Worker] = {}
    for worker in workers:
        if worker.source != source_name:
            worker = replace(worker, source=source_name)
        wanted[worker.id] = worker

    for worker_id, worker in wanted.items():
        current = registry.get(worker_id)
        if current is not None and current.source != source_name:
            logger.warning(
                "%s: worker %s is already registered by source %r; ignoring it",
                source_name,
                worker_id,
                current.source,
            )
            skipped.append(worker_id)
            continue
        if current is None:
            registry.upsert(worker)
            added.append(worker_id)
            continue
        if current.state is WorkerState.DRAINING:
            cancel_drain(registry, worker_id)
            registry.remove(worker_id)
            registry.upsert(worker)
            added.append(worker_id)
            continue
        if not worker.models and current.address == worker.address:
            worker = replace(worker, models=current.models)
        if registry.upsert(worker) is not current:
            updated.append(worker_id)

    draining: list[str] = []
    for worker_id, worker in registry.workers_from(source_name).items():
        if worker_id in wanted:
            continue
        if worker.state is not WorkerState.DRAINING:
            draining.append(worker_id)
        start_drain(registry, worker_id, drain_timeout_s)

    result = SyncResult(tuple(added), tuple(updated), tuple(draining), tuple(skipped))
    if result.changed:
        logger.info(
            "%s: %d added, %d updated, %d draining",
            source_name,
            len(added),
            len(updated),
            len(draining),
        )
    return result
