"""Pool names, clusters, assignments and content-hashed snapshots."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from corral.config.settings import parse_settings
from corral.errors import ConfigError
from corral.pool import WorkerState, make_worker
from corral.xds import type_urls
from corral.xds.names import pool_cluster_name
from corral.xds.resources import build_assignment, build_cluster
from corral.xds.snapshot import Snapshot


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("tiny", "corral_pool_tiny"),
        ("Qwen2.5-7B_x", "corral_pool_Qwen2.5-7B_x"),
        (
            "meta-llama/Llama-3",
            "corral_pool_meta-llama_Llama-3_"
            + hashlib.sha256(b"meta-llama/Llama-3").hexdigest()[:8],
        ),
    ],
    ids=["plain", "safe-punctuation", "slash-replaced-and-hashed"],
)
def test_pool_cluster_name_follows_the_contract(model: str, expected: str) -> None:
    assert pool_cluster_name(model) == expected


def test_replaced_names_of_distinct_models_do_not_collide() -> None:
    assert pool_cluster_name("a/b") != pool_cluster_name("a:b")


def test_cluster_is_eds_over_ads_with_override_host_and_round_robin_fallback() -> None:
    settings = parse_settings({"timeouts": {"connect_s": 1.5}})
    cluster = build_cluster("m", settings)
    assert cluster.type == cluster_pb2.Cluster.EDS
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.connect_timeout.seconds == 1
    assert cluster.connect_timeout.nanos == 500_000_000
    limit = settings.limits.max_body_bytes + 64 * 1024
    assert cluster.per_connection_buffer_limit_bytes.value == limit
    assert cluster.circuit_breakers.thresholds[0].max_requests.value >= 100_000
    assert cluster.outlier_detection.consecutive_gateway_failure.value > 0
    policy = cluster.load_balancing_policy.policies[0].typed_extension_config
    assert policy.name == "envoy.load_balancing_policies.override_host"
    override = override_host_pb2.OverrideHost()
    policy.typed_config.Unpack(override)
    assert [s.header for s in override.override_host_sources] == [
        "x-gateway-destination-endpoint"
    ]
    fallback = override.fallback_policy.policies[0].typed_extension_config
    assert fallback.name == "envoy.load_balancing_policies.round_robin"


@pytest.mark.parametrize("protocol", ["http1", "h2c"])
def test_worker_protocol_follows_settings(protocol: str) -> None:
    cluster = build_cluster("m", parse_settings({"envoy": {"worker_protocol": protocol}}))
    options = http_protocol_options_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Unpack(options)
    chosen = options.explicit_http_config.WhichOneof("protocol_config")
    assert chosen == ("http2_protocol_options" if protocol == "h2c" else
                      "http_protocol_options")


def test_assignment_carries_health_per_worker_state() -> None:
    states = {
        9001: WorkerState.READY, 9002: WorkerState.DRAINING,
        9003: WorkerState.NOT_READY, 9004: WorkerState.PENDING,
    }
    workers = []
    for port, state in states.items():
        worker = make_worker(f"http://127.0.0.1:{port}", models=("m",))
        workers.append(dataclasses.replace(worker, state=state))
    assignment = build_assignment("m", workers)
    assert assignment.cluster_name == "corral_pool_m"
    health = {
        e.endpoint.address.socket_address.port_value: e.health_status
        for e in assignment.endpoints[0].lb_endpoints
    }
    assert health == {
        9001: health_check_pb2.HEALTHY, 9002: health_check_pb2.DRAINING,
        9003: health_check_pb2.UNHEALTHY, 9004: health_check_pb2.UNHEALTHY,
    }


def test_localhost_is_sent_as_an_ip_and_dns_names_are_left_out() -> None:
    workers = [
        make_worker("http://localhost:9001", models=("m",)),
        make_worker("http://worker.example:9002", models=("m",)),
    ]
    assignment = build_assignment("m", workers)
    addresses = [
        e.endpoint.address.socket_address.address
        for e in assignment.endpoints[0].lb_endpoints
    ]
    assert addresses == ["127.0.0.1"]


def _snapshot(ports: list[int], connect_s: float = 2.0) -> Snapshot:
    settings = parse_settings({"timeouts": {"connect_s": connect_s}})
    workers = [make_worker(f"http://127.0.0.1:{p}", models=("m",)) for p in ports]
    return Snapshot.build([build_cluster("m", settings)], [build_assignment("m", workers)])


def test_versions_are_content_hashes_stable_across_builds() -> None:
    first, second = _snapshot([9001, 9002]), _snapshot([9001, 9002])
    assert first.version(type_urls.CLUSTER) == second.version(type_urls.CLUSTER)
    assert first.version(type_urls.ENDPOINT) == second.version(type_urls.ENDPOINT)
    assert first == second


def test_versions_change_only_for_the_type_whose_content_changed() -> None:
    base = _snapshot([9001])
    more = _snapshot([9001, 9002])
    slower = _snapshot([9001], connect_s=3.0)
    assert more.version(type_urls.CLUSTER) == base.version(type_urls.CLUSTER)
    assert more.version(type_urls.ENDPOINT) != base.version(type_urls.ENDPOINT)
    assert slower.version(type_urls.CLUSTER) != base.version(type_urls.CLUSTER)
    assert slower.version(type_urls.ENDPOINT) == base.version(type_urls.ENDPOINT)


def test_snapshot_without_an_assignment_for_an_eds_cluster_is_refused() -> None:
    cluster = build_cluster("m", parse_settings({}))
    with pytest.raises(ConfigError, match="corral_pool_m"):
        Snapshot.build([cluster], [endpoint_pb2.ClusterLoadAssignment(cluster_name="x")])


def test_select_returns_named_resources_in_name_order_or_all() -> None:
    settings = parse_settings({})
    snapshot = Snapshot.build(
        [build_cluster(m, settings) for m in ("b", "a")],
        [build_assignment(m, ()) for m in ("b", "a")],
    )
    assert [r.name for r in snapshot.select(type_urls.CLUSTER, None)] == [
        "corral_pool_a", "corral_pool_b"]
    assert [r.name for r in snapshot.select(type_urls.ENDPOINT, ["corral_pool_b", "z"])] \
        == ["corral_pool_b"]
