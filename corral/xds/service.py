"""The Aggregated Discovery Service: registry changes become pushes to Envoy.

``AdsServer`` keeps one current ``Snapshot`` built from the worker registry and
serves it over both ADS flavours on a grpc.aio server. Registry changes are
coalesced (a burst of changes in one short window makes one snapshot) and pushed
to every open stream at once; streams whose content did not change get nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from corral.config.settings import Settings
from corral.errors import ConfigError
from corral.observability import metrics
from corral.pool import RegistrySnapshot, WorkerRegistry
from corral.xds import resources
from corral.xds.delta import DeltaStream
from corral.xds.snapshot import EMPTY, Snapshot
from corral.xds.sotw import SotwStream

logger = logging.getLogger(__name__)

DEFAULT_COALESCE_S = 0.01
"""Window in which registry changes are gathered into one snapshot."""

ClusterHook = Callable[[cluster_pb2.Cluster], None]

_SNAPSHOT = object()
_CLOSE = object()


class _Stream:
    """One open ADS call: its queue of requests and snapshot wake-ups."""

    __slots__ = ("machine", "queue", "wake_pending")

    def __init__(self, machine: SotwStream | DeltaStream) -> None:
        self.machine = machine
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.wake_pending = False

    def wake(self) -> None:
        # One wake-up in the queue is enough: the stream reads the newest
        # snapshot when it gets to it, so bursts collapse here too.
        if not self.wake_pending:
            self.wake_pending = True
            self.queue.put_nowait(_SNAPSHOT)


class AdsServer:
    """ADS (SotW and Delta) over the registry's pools, for one grpc.aio server.

    Build it on the event loop that runs the gRPC server, call
    ``add_to_server(server)`` before ``server.start()``, and ``close()`` before
    stopping the server. The snapshot follows the registry by itself.
    """

    def __init__(
        self,
        registry: WorkerRegistry,
        settings: Settings,
        *,
        coalesce_s: float = DEFAULT_COALESCE_S,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._coalesce_s = coalesce_s
        self._clusters: dict[str, cluster_pb2.Cluster] = {}
        self._hook: ClusterHook | None = None
        self._snapshot: Snapshot = EMPTY
        self._streams: set[_Stream] = set()
        self._ids = itertools.count(1)
        self._build_task: asyncio.Task[None] | None = None
        self._closed = False
        self._unsubscribe = registry.subscribe(self._on_registry_change)
        self.rebuild()

    def __repr__(self) -> str:
        return f"<AdsServer streams={len(self._streams)} {self._snapshot!r}>"

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot streams are serving now."""
        return self._snapshot

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register the AggregatedDiscoveryService on ``server`` (not started yet)."""
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            _Servicer(self), server
        )

    async def close(self) -> None:
        """Stop following the registry and end every open stream."""
        self._closed = True
        self._unsubscribe()
        if self._build_task is not None:
            self._build_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._build_task
            self._build_task = None
        for stream in list(self._streams):
            stream.queue.put_nowait(_CLOSE)

    def set_cluster_hook(self, hook: ClusterHook | None) -> None:
        """Let ``hook`` edit every Cluster before it is published; rebuilds now.

        For tests and diagnostics (e.g. pushing a Cluster Envoy must reject);
        ``None`` removes the hook.
        """
        self._hook = hook
        self.rebuild()

    def rebuild(self) -> Snapshot:
        """Build a snapshot from the registry now and publish it if it changed.

        An inconsistent snapshot is logged and the previous one kept.
        """
        try:
            snapshot = self._build(self._registry.snapshot())
        except ConfigError as exc:
            logger.error("xDS snapshot not published: %s", exc.message)
            return self._snapshot
        if snapshot != self._snapshot:
            self._snapshot = snapshot
            logger.debug("xDS snapshot %r", snapshot)
            for stream in self._streams:
                stream.wake()
        return self._snapshot

    # -- building -----------------------------------------------------------

    def _cluster(self, model: str) -> cluster_pb2.Cluster:
        cluster = self._clusters.get(model)
        if cluster is None:
            cluster = resources.build_cluster(model, self._settings)
            self._clusters[model] = cluster
        if self._hook is None:
            return cluster
        edited = cluster_pb2.Cluster()
        edited.CopyFrom(cluster)
        self._hook(edited)
        return edited

    def _build(self, registry: RegistrySnapshot) -> Snapshot:
        models = resources.pool_models(registry, self._settings)
        return Snapshot.build(
            [self._cluster(m) for m in models],
            [resources.build_assignment(m, registry.pool(m)) for m in models],
        )

    def _on_registry_change(self, _snapshot: RegistrySnapshot) -> None:
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.rebuild()  # no loop yet (set-up code): nobody to coalesce for
            return
        if self._build_task is None:
            self._build_task = loop.create_task(self._build_soon())

    async def _build_soon(self) -> None:
        await asyncio.sleep(self._coalesce_s)
        self._build_task = None
        self.rebuild()

    # -- streams ------------------------------------------------------------

    async def serve(
        self,
        machine: SotwStream | DeltaStream,
        context: grpc.aio.ServicerContext,
        mode: str,
    ) -> None:
        """Run one ADS call until Envoy hangs up or ``close()`` is called."""
        stream = _Stream(machine)
        self._streams.add(stream)
        metrics.XDS_STREAMS.labels(mode=mode).inc()
        reader = asyncio.create_task(self._read(context, stream.queue))
        logger.info(
            "ADS %s stream %s opened from %s", mode, machine.stream_id, context.peer()
        )
        try:
            while True:
                item = await stream.queue.get()
                if item is _CLOSE:
                    break
                if item is _SNAPSHOT:
                    stream.wake_pending = False
                    responses: list[Any] = machine.on_snapshot(self._snapshot)
                else:
                    responses = machine.on_request(item, self._snapshot)
                for response in responses:
                    await context.write(response)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._streams.discard(stream)
            metrics.XDS_STREAMS.labels(mode=mode).dec()
            logger.info(
                "ADS %s stream %s from node %s closed",
                mode,
                machine.stream_id,
                machine.node_id or "?",
            )

    @staticmethod
    async def _read(
        context: grpc.aio.ServicerContext, queue: asyncio.Queue[Any]
    ) -> None:
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                queue.put_nowait(request)
        except (grpc.aio.AioRpcError, grpc.RpcError, asyncio.InvalidStateError) as exc:
            logger.debug("ADS stream read ended: %r", exc)
        finally:
            queue.put_nowait(_CLOSE)

    def next_stream_id(self) -> str:
        return f"ads-{next(self._ids)}"


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, ads: AdsServer) -> None:
        self._ads = ads

    async def StreamAggregatedResources(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        await self._ads.serve(SotwStream(self._ads.next_stream_id()), context, "sotw")

    async def DeltaAggregatedResources(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        await self._ads.serve(DeltaStream(self._ads.next_stream_id()), context, "delta")
