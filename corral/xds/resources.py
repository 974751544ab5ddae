"""Registry snapshot -> Envoy resources: one EDS Cluster and one assignment per pool.

Every pool cluster load-balances with ``override_host``: the ext_proc server names
the worker (and ordered fallbacks) in ``x-gateway-destination-endpoint`` and Envoy
sends there; a request without the header (ext_proc down and failing open) gets the
round-robin fallback over the HEALTHY endpoints. override_host ignores health for
the hosts it is told to use, so health is carried on the endpoints for the
fallback's sake and the picker filters on its side.
https://www.envoyproxy.io/docs/envoy/latest/api-docs/envoy/extensions/load_balancing_policies/override_host/v3/override_host.proto
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from envoy.config.cluster.v3 import (
    circuit_breaker_pb2,
    cluster_pb2,
    outlier_detection_pb2,
)
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from corral.config.settings import Settings
from corral.pool import RegistrySnapshot, Worker, WorkerState
from corral.xds.names import DESTINATION_HEADER, pool_cluster_name

logger = logging.getLogger(__name__)

BUFFER_HEADROOM_BYTES = 64 * 1024
"""Above ``max_body_bytes``, so a BUFFERED body of exactly the limit still fits."""

# Circuit breakers sized so they never shed LLM traffic: a worker holds a few
# hundred concurrent sequences at most, and admission control lives in Corral.
_BREAKER_LIMIT = 100_000

_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# EDS health per worker state; override_host still uses pinned hosts whatever
# their health, so these only steer the fallback round robin.
_HEALTH = {
    WorkerState.READY: health_check_pb2.HEALTHY,
    WorkerState.DRAINING: health_check_pb2.DRAINING,
    WorkerState.NOT_READY: health_check_pb2.UNHEALTHY,
    WorkerState.PENDING: health_check_pb2.UNHEALTHY,
}

# Hostnames cannot go into an EDS endpoint (Envoy wants IP literals there); this
# one is common enough in local set-ups to translate.


def buffer_limit_bytes(settings: Settings) -> int:
    """``per_connection_buffer_limit_bytes`` for the listener and worker clusters."""
    return settings.limits.max_body_bytes + BUFFER_HEADROOM_BYTES


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _lb_policy() -> cluster_pb2.LoadBalancingPolicy:
    # One source only: a header and a metadata source would be concatenated into a
    # duplicated failover list (see the override_host proto docs).
    override = override_host_pb2.OverrideHost(
        override_host_sources=[
            override_host_pb2.OverrideHost.OverrideHostSource(header=DESTINATION_HEADER)
        ],
        fallback_policy=cluster_pb2.LoadBalancingPolicy(
            policies=[
                cluster_pb2.LoadBalancingPolicy.Policy(
                    typed_extension_config=extension_pb2.TypedExtensionConfig(
                        name="envoy.load_balancing_policies.round_robin",
                        typed_config=_pack(round_robin_pb2.RoundRobin()),
                    )
                )
            ]
        ),
    )
    return cluster_pb2.LoadBalancingPolicy(
        policies=[
            cluster_pb2.LoadBalancingPolicy.Policy(
                typed_extension_config=extension_pb2.TypedExtensionConfig(
                    name="envoy.load_balancing_policies.override_host",
                    typed_config=_pack(override),
                )
            )
        ]
    )


def _protocol_options(settings: Settings) -> any_pb2.Any:
    options = http_protocol_options_pb2.HttpProtocolOptions(
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=_duration(settings.timeouts.idle_s)
        )
    )
    explicit = options.explicit_http_config
    if settings.envoy.worker_protocol == "h2c":
        explicit.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
    else:
        explicit.http_protocol_options.CopyFrom(protocol_pb2.Http1ProtocolOptions())
    return _pack(options)


def _circuit_breakers(settings: Settings) -> circuit_breaker_pb2.CircuitBreakers:
    limit = wrappers_pb2.UInt32Value(value=_BREAKER_LIMIT)
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        priority=base_pb2.DEFAULT,
        max_connections=limit,
        max_pending_requests=limit,
        max_requests=limit,
        max_retries=limit,
        # Retries are bounded by a share of the active requests instead of a count.
        retry_budget=circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
            budget_percent=percent_pb2.Percent(value=settings.retry.budget_percent),
            min_retry_concurrency=wrappers_pb2.UInt32Value(value=10),
        ),
    )
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def _outlier_detection() -> outlier_detection_pb2.OutlierDetection:
    # Only the fallback path honours ejections (override_host does not), so these
    # guard fail-open traffic from a worker that keeps failing.
    return outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(value=5),
        consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=3),
        enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=100),
        interval=_duration(5.0),
        base_ejection_time=_duration(15.0),
        max_ejection_time=_duration(120.0),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=50),
    )


def build_cluster(model: str, settings: Settings) -> cluster_pb2.Cluster:
    """The EDS cluster of one model pool (endpoints come from ADS)."""
    name = pool_cluster_name(model)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            service_name=name,
            eds_config=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
        ),
        connect_timeout=_duration(settings.timeouts.connect_s),
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(
            value=buffer_limit_bytes(settings)
        ),
        load_balancing_policy=_lb_policy(),
        circuit_breakers=_circuit_breakers(settings),
        outlier_detection=_outlier_detection(),
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            # Fallback traffic must still flow when most of a pool is unhealthy.
            healthy_panic_threshold=percent_pb2.Percent(value=0.0),
        ),
    )
    cluster.typed_extension_protocol_options[_HTTP_OPTIONS_KEY].CopyFrom(
        _protocol_options(settings)
    )
    cluster.metadata.filter_metadata["corral"].update({"model": model})
    return cluster


def endpoint_ip(worker: Worker) -> str | None:
    """The IP literal Envoy can use for ``worker``: its host, or what its name
    resolved to; None before a name has resolved."""
    return worker.ip


def build_assignment(
    model: str, workers: Iterable[Worker]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints of one pool, with each worker's health as EDS health."""
    lb_endpoints = []
    for worker in workers:
        ip = endpoint_ip(worker)
        if ip is None:
            # A name not resolved yet (health checks resolve it): EDS takes IPs.
            logger.debug("worker %s (%s) has no address yet", worker.id, worker.host)
            continue
        metadata = base_pb2.Metadata()
        metadata.filter_metadata["corral"].update({"worker_id": worker.id})
        lb_endpoints.append(
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(
                        socket_address=address_pb2.SocketAddress(
                            address=ip, port_value=worker.port
                        )
                    ),
                    hostname=worker.id,
                ),
                health_status=_HEALTH[worker.state],
                metadata=metadata,
            )
        )
    assignment = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=pool_cluster_name(model)
    )
    if lb_endpoints:
        assignment.endpoints.append(
            endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)
        )
    return assignment


def pool_models(snapshot: RegistrySnapshot, settings: Settings) -> tuple[str, ...]:
    """Every pool to publish: configured models first, then those workers name."""
    configured = tuple(m.name for m in settings.models)
    return tuple(dict.fromkeys((*configured, *snapshot.models)))
