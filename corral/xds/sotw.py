"""The state-of-the-world side of one ADS stream: nonces, ACKs, NACKs, pushes.

Pure bookkeeping with no I/O: the service feeds it Envoy's requests and new
snapshots, and writes whatever responses it returns. The rules are the xDS
protocol's ACK/NACK section
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack-nack-and-resource-type-instance-version):

1. A request with an empty nonce (first request, or after a reconnect) is answered.
2. A request whose nonce is not the last one sent for its type is stale and dropped.
3. ``nonce == last`` without ``error_detail`` acknowledges the last response.
4. ``error_detail`` rejects it: logged, counted, and never sent again; the next
   push happens only when the content changes.
5. A request that changes the subscribed names is answered.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from corral.observability import metrics
from corral.xds import type_urls
from corral.xds.snapshot import Snapshot

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class TypeState:
    """What one stream knows about one resource type."""

    subscribed: bool = False
    names: frozenset[str] | None = None
    """Requested resource names; None is a wildcard (every resource)."""
    nonce: str = ""
    sent_version: str = ""
    sent_at: float = 0.0
    awaiting: bool = False
    """The last response is neither acknowledged nor rejected yet."""
    acked_version: str = ""
    nacked_version: str = ""
    sent_resources: dict[str, str] = field(default_factory=dict)
    resend: bool = False
    """Answer the next request even if it looks like an ACK (EDS after CDS)."""


def _is_wildcard(type_url: str, names: list[str]) -> bool:
    # Clusters are subscribed as a wildcard (empty list or "*"), endpoints by name.
    # https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#how-the-client-specifies-what-resources-to-return
    return type_url == type_urls.CLUSTER and (not names or "*" in names)


class SotwStream:
    """ACK/NACK state machine of one ``StreamAggregatedResources`` call."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.node_id = ""
        self.states: dict[str, TypeState] = {
            t: TypeState() for t in type_urls.PUSH_ORDER
        }
        self._counter = 0

    def __repr__(self) -> str:
        parts = " ".join(
            f"{type_urls.short_name(t)}="
            f"{s.sent_version or '-'}/{s.acked_version or '-'}"
            for t, s in self.states.items()
        )
        return f"<SotwStream {self.stream_id} node={self.node_id or '-'} {parts}>"

    def on_request(
        self, request: discovery_pb2.DiscoveryRequest, snapshot: Snapshot
    ) -> list[discovery_pb2.DiscoveryResponse]:
        """Handle one request from Envoy; returns the responses to send, in order."""
        if request.node.id and not self.node_id:
            self.node_id = request.node.id
        type_url = request.type_url
        state = self.states.get(type_url)
        if state is None:
            logger.debug(
                "[%s] ignoring request for unserved type %s", self.stream_id, type_url
            )
            return []
        nonce = request.response_nonce
        if nonce and nonce != state.nonce:
            logger.debug(
                "[%s] %s: stale nonce %s (last %s), dropped",
                self.stream_id,
                type_urls.short_name(type_url),
                nonce,
                state.nonce,
            )
            return []
        names = (
            None
            if _is_wildcard(type_url, list(request.resource_names))
            else frozenset(request.resource_names)
        )
        names_changed = state.subscribed and names != state.names
        state.subscribed = True
        state.names = names
        if request.HasField("error_detail"):
            self._nack(type_url, state, request)
            return []
        repeated = False
        if nonce:
            if state.awaiting:
                self._ack(type_url, state, request)
            else:
                # A second request on an acknowledged nonce is a fresh ask: Envoy
                # re-warming a changed cluster re-requests EDS this way.
                repeated = True
        if (
            nonce
            and not names_changed
            and snapshot.version(type_url) == state.nacked_version
        ):
            return []  # what Envoy rejected is not offered again, however asked
        answer = (
            not nonce
            or names_changed
            or repeated
            or state.resend
            or (
                snapshot.version(type_url) != state.sent_version
                and snapshot.version(type_url) != state.nacked_version
            )
        )
        if not answer:
            return []
        return [self._respond(type_url, state, snapshot)]

    def on_snapshot(self, snapshot: Snapshot) -> list[discovery_pb2.DiscoveryResponse]:
        """Push every subscribed type whose content changed, clusters first."""
        responses = []
        for type_url in type_urls.PUSH_ORDER:
            state = self.states[type_url]
            if state.subscribed and snapshot.version(type_url) != state.sent_version:
                responses.append(self._respond(type_url, state, snapshot))
        return responses

    # -- internals ----------------------------------------------------------

    def _next_nonce(self) -> str:
        self._counter += 1
        return str(self._counter)

    def _respond(
        self, type_url: str, state: TypeState, snapshot: Snapshot
    ) -> discovery_pb2.DiscoveryResponse:
        resources = snapshot.select(type_url, state.names)
        if type_url == type_urls.CLUSTER:
            changed = any(
                state.sent_resources.get(r.name, r.version) != r.version
                for r in resources
            )
            state.sent_resources = {r.name: r.version for r in resources}
            if changed:
                # Envoy re-warms a changed cluster and asks for its endpoints
                # again with a request that looks exactly like an ACK; without an
                # answer the cluster warms until initial_fetch_timeout (15 s).
                self.states[type_urls.ENDPOINT].resend = True
        else:
            state.resend = False
        state.nonce = self._next_nonce()
        state.sent_version = snapshot.version(type_url)
        state.sent_at = time.monotonic()
        state.awaiting = True
        metrics.XDS_PUSHES.labels(type=type_urls.short_name(type_url)).inc()
        logger.debug(
            "[%s] push %s version=%s nonce=%s resources=%d",
            self.stream_id,
            type_urls.short_name(type_url),
            state.sent_version,
            state.nonce,
            len(resources),
        )
        return discovery_pb2.DiscoveryResponse(
            version_info=state.sent_version,
            resources=[r.packed for r in resources],
            type_url=type_url,
            nonce=state.nonce,
        )

    def _ack(
        self, type_url: str, state: TypeState, request: discovery_pb2.DiscoveryRequest
    ) -> None:
        short = type_urls.short_name(type_url)
        state.awaiting = False
        state.acked_version = request.version_info
        metrics.XDS_ACKS.labels(type=short).inc()
        metrics.XDS_PUSH_LATENCY.labels(type=short).observe(
            time.monotonic() - state.sent_at
        )
        logger.debug(
            "[%s] ACK %s version=%s nonce=%s",
            self.stream_id,
            short,
            request.version_info,
            request.response_nonce,
        )

    def _nack(
        self, type_url: str, state: TypeState, request: discovery_pb2.DiscoveryRequest
    ) -> None:
        short = type_urls.short_name(type_url)
        if state.awaiting:
            metrics.XDS_PUSH_LATENCY.labels(type=short).observe(
                time.monotonic() - state.sent_at
            )
        state.awaiting = False
        state.nacked_version = state.sent_version
        metrics.XDS_NACKS.labels(type=short).inc()
        logger.warning(
            "Envoy %s rejected %s version %s (nonce %s), keeps version %s: %s",
            self.node_id or "?",
            short,
            state.sent_version,
            request.response_nonce,
            request.version_info or "-",
            request.error_detail.message,
        )
