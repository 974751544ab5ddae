"""The incremental (Delta) side of one ADS stream.

Envoy tells what it subscribes to and which versions it already holds; the
server sends only resources whose version differs and names the ones that went
away. ACK and NACK work by nonce as in state of the world
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds).
Envoy never re-requests endpoints after a cluster changes in Delta mode, so every
changed Cluster is followed, unasked, by its ClusterLoadAssignment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from corral.observability import metrics
from corral.xds import type_urls
from corral.xds.snapshot import Snapshot

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class DeltaTypeState:
    subscribed: bool = False
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)
    """Name -> version Envoy holds, as far as this stream has told it."""
    nonce: str = ""
    sent_at: float = 0.0
    awaiting: bool = False


class DeltaStream:
    """ACK/NACK and diff state machine of one ``DeltaAggregatedResources`` call."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.node_id = ""
        self.states = {t: DeltaTypeState() for t in type_urls.PUSH_ORDER}
        self._counter = 0

    def __repr__(self) -> str:
        parts = " ".join(
            f"{type_urls.short_name(t)}={len(s.known)}" for t, s in self.states.items()
        )
        return f"<DeltaStream {self.stream_id} node={self.node_id or '-'} {parts}>"

    def on_request(
        self, request: discovery_pb2.DeltaDiscoveryRequest, snapshot: Snapshot
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        if request.node.id and not self.node_id:
            self.node_id = request.node.id
        type_url = request.type_url
        state = self.states.get(type_url)
        if state is None:
            logger.debug(
                "[%s] ignoring delta request for unserved type %s",
                self.stream_id,
                type_url,
            )
            return []
        first = not state.subscribed
        subscribe = list(request.resource_names_subscribe)
        unsubscribe = list(request.resource_names_unsubscribe)
        if first:
            state.subscribed = True
            # What Envoy already holds (after a reconnect): only differences go out.
            state.known = dict(request.initial_resource_versions)
            state.wildcard = type_url == type_urls.CLUSTER and (
                not subscribe or "*" in subscribe
            )
        elif "*" in subscribe:
            state.wildcard = True
        if "*" in unsubscribe:
            state.wildcard = False
        state.names.update(n for n in subscribe if n != "*")
        for name in unsubscribe:
            state.names.discard(name)
            state.known.pop(name, None)
        nonce = request.response_nonce
        if nonce:
            if nonce != state.nonce:
                logger.debug(
                    "[%s] %s: stale delta nonce %s (last %s)",
                    self.stream_id,
                    type_urls.short_name(type_url),
                    nonce,
                    state.nonce,
                )
            elif request.HasField("error_detail"):
                self._nack(type_url, state, request)
            elif state.awaiting:
                self._ack(type_url, state, nonce)
        if not (first or subscribe):
            return []
        replaced = (
            self._replaced_clusters(snapshot) if type_url == type_urls.CLUSTER else ()
        )
        response = self._diff(type_url, snapshot, force_empty=first and not state.known)
        if response is None:
            return []
        if not replaced:
            return [response]
        eds = self._diff(type_urls.ENDPOINT, snapshot, force=replaced)
        return [response] if eds is None else [response, eds]

    def on_snapshot(
        self, snapshot: Snapshot
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """Send what changed since Envoy's view, clusters first."""
        responses: list[discovery_pb2.DeltaDiscoveryResponse] = []
        replaced = self._replaced_clusters(snapshot)
        cds = self._diff(type_urls.CLUSTER, snapshot)
        if cds is not None:
            responses.append(cds)
        eds = self._diff(type_urls.ENDPOINT, snapshot, force=replaced)
        if eds is not None:
            responses.append(eds)
        return responses

    # -- internals ----------------------------------------------------------

    def _replaced_clusters(self, snapshot: Snapshot) -> set[str]:
        # Clusters Envoy holds whose content is about to change: it re-warms them
        # and waits for their assignments without asking again.
        state = self.states[type_urls.CLUSTER]
        available = snapshot.resources(type_urls.CLUSTER)
        return {
            name
            for name, version in state.known.items()
            if name in available and available[name].version != version
        }

    def _diff(
        self,
        type_url: str,
        snapshot: Snapshot,
        *,
        force: Iterable[str] = (),
        force_empty: bool = False,
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        state = self.states[type_url]
        if not state.subscribed:
            return None
        available = snapshot.resources(type_url)
        wanted = available.keys() if state.wildcard else state.names & available.keys()
        forced = set(force)
        changed = [
            available[n]
            for n in sorted(wanted)
            if state.known.get(n) != available[n].version or n in forced
        ]
        removed = sorted(n for n in state.known if n not in available)
        if not changed and not removed and not force_empty:
            return None
        for resource in changed:
            state.known[resource.name] = resource.version
        for name in removed:
            del state.known[name]
        self._counter += 1
        state.nonce = str(self._counter)
        state.sent_at = time.monotonic()
        state.awaiting = True
        metrics.XDS_PUSHES.labels(type=type_urls.short_name(type_url)).inc()
        logger.debug(
            "[%s] delta push %s nonce=%s changed=%d removed=%d",
            self.stream_id,
            type_urls.short_name(type_url),
            state.nonce,
            len(changed),
            len(removed),
        )
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=snapshot.version(type_url),
            resources=[
                discovery_pb2.Resource(
                    name=r.name, version=r.version, resource=r.packed
                )
                for r in changed
            ],
            removed_resources=removed,
            type_url=type_url,
            nonce=state.nonce,
        )

    def _ack(self, type_url: str, state: DeltaTypeState, nonce: str) -> None:
        short = type_urls.short_name(type_url)
        state.awaiting = False
        metrics.XDS_ACKS.labels(type=short).inc()
        metrics.XDS_PUSH_LATENCY.labels(type=short).observe(
            time.monotonic() - state.sent_at
        )
        logger.debug("[%s] delta ACK %s nonce=%s", self.stream_id, short, nonce)

    def _nack(
        self,
        type_url: str,
        state: DeltaTypeState,
        request: discovery_pb2.DeltaDiscoveryRequest,
    ) -> None:
        short = type_urls.short_name(type_url)
        if state.awaiting:
            metrics.XDS_PUSH_LATENCY.labels(type=short).observe(
                time.monotonic() - state.sent_at
            )
        state.awaiting = False
        # Envoy kept its previous resources, but the rejected versions stay in
        # ``known`` on purpose: they are sent again only once their content changes.
        metrics.XDS_NACKS.labels(type=short).inc()
        logger.warning(
            "Envoy %s rejected delta %s (nonce %s): %s",
            self.node_id or "?",
            short,
            request.response_nonce,
            request.error_detail.message,
        )
