"""Workers written in the configuration file (``workers:``), source "static"."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from corral.config.settings import StaticWorker
from corral.discovery.base import DEFAULT_DRAIN_TIMEOUT_S, sync_source, worker_from_spec
from corral.errors import GatewayError
from corral.pool import Worker, WorkerRegistry

logger = logging.getLogger(__name__)


class StaticSource:
    """Registers the configured workers once, then holds them until cancelled.

    An entry with a bad URL or role is logged and skipped; the others still
    register. Entries without models get theirs from ``/v1/models`` when the
    health checker admits them.
    """

    name = "static"

    def __init__(
        self,
        registry: WorkerRegistry,
        workers: Sequence[StaticWorker],
        *,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
    ) -> None:
        self._registry = registry
        self._specs = tuple(workers)
        self._drain_timeout_s = drain_timeout_s

    def __repr__(self) -> str:
        return f"<StaticSource workers={len(self._specs)}>"

    def workers(self) -> list[Worker]:
        """The valid configured entries as PENDING workers."""
        built: list[Worker] = []
        for index, spec in enumerate(self._specs):
            try:
                built.append(worker_from_spec(spec, self.name))
            except GatewayError as exc:
                logger.warning("workers[%d] skipped: %s", index, exc.message)
        return built

    def sync(self) -> None:
        sync_source(
            self._registry,
            self.name,
            self.workers(),
            drain_timeout_s=self._drain_timeout_s,
        )

    async def run(self) -> None:
        self.sync()
        # Static membership never changes; staying alive until cancelled keeps
        # the same lifecycle as every other source.
        await asyncio.Event().wait()
