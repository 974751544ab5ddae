"""The ACK/NACK state machines of SotW and Delta streams, driven by hand."""

from __future__ import annotations

import logging

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from corral.config.settings import parse_settings
from corral.pool import make_worker
from corral.xds import type_urls
from corral.xds.delta import DeltaStream
from corral.xds.resources import build_assignment, build_cluster
from corral.xds.snapshot import Snapshot
from corral.xds.sotw import SotwStream

CDS, EDS = type_urls.CLUSTER, type_urls.ENDPOINT
POOL = "corral_pool_m"


def snap(ports: tuple[int, ...] = (9001,), connect_s: float = 2.0) -> Snapshot:
    settings = parse_settings({"timeouts": {"connect_s": connect_s}})
    workers = [make_worker(f"http://127.0.0.1:{p}", models=("m",)) for p in ports]
    return Snapshot.build([build_cluster("m", settings)], [build_assignment("m", workers)])


def req(type_url: str, *, nonce: str = "", version: str = "", names: tuple[str, ...] = (),
        error: str | None = None) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(
        type_url=type_url, response_nonce=nonce, version_info=version,
        resource_names=list(names), node=base_pb2.Node(id="envoy-1"),
    )
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return request


def subscribed_sotw(snapshot: Snapshot) -> tuple[SotwStream, str, str]:
    stream = SotwStream("t")
    [cds] = stream.on_request(req(CDS), snapshot)
    [eds] = stream.on_request(req(EDS, names=(POOL,)), snapshot)
    assert stream.on_request(req(CDS, nonce=cds.nonce, version=cds.version_info),
                             snapshot) == []
    assert stream.on_request(req(EDS, nonce=eds.nonce, version=eds.version_info,
                                 names=(POOL,)), snapshot) == []
    return stream, cds.nonce, eds.nonce


def test_sotw_answers_initial_requests_with_content_hash_versions() -> None:
    snapshot = snap()
    stream = SotwStream("t")
    [cds] = stream.on_request(req(CDS), snapshot)
    assert cds.version_info == snapshot.version(CDS)
    assert len(cds.resources) == 1
    [eds] = stream.on_request(req(EDS, names=(POOL,)), snapshot)
    assert eds.version_info == snapshot.version(EDS) and eds.nonce != cds.nonce


def test_sotw_ack_gets_no_answer_and_stale_nonce_is_dropped() -> None:
    stream, cds_nonce, _ = subscribed_sotw(snap())
    assert stream.states[CDS].acked_version == snap().version(CDS)
    assert stream.on_request(req(CDS, nonce="999"), snap((9001, 9002))) == []


def test_sotw_pushes_only_the_type_whose_content_changed() -> None:
    stream, _, _ = subscribed_sotw(snap())
    pushes = stream.on_snapshot(snap((9001, 9002)))
    assert [p.type_url for p in pushes] == [EDS]
    assert stream.on_snapshot(snap((9001, 9002))) == []


def test_sotw_nack_is_logged_counted_and_never_resent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream, _, _ = subscribed_sotw(snap())
    bad = snap(connect_s=3.0)
    [push] = stream.on_snapshot(bad)
    with caplog.at_level(logging.WARNING, logger="corral.xds"):
        answer = stream.on_request(
            req(CDS, nonce=push.nonce, version=snap().version(CDS), error="bad duration"),
            bad,
        )
    assert answer == []
    assert "bad duration" in caplog.text
    # Neither a repeated snapshot nor a later ACK-looking request resends it.
    assert stream.on_snapshot(bad) == []
    assert stream.on_request(req(CDS, nonce=push.nonce), bad) == []
    # New content is pushed.
    assert [p.type_url for p in stream.on_snapshot(snap(connect_s=4.0))] == [CDS]


def test_sotw_answers_the_ack_looking_eds_request_after_a_cluster_change() -> None:
    stream, _, eds_nonce = subscribed_sotw(snap())
    changed = snap(connect_s=3.0)
    [cds] = stream.on_snapshot(changed)
    # Envoy re-warms the cluster and repeats its last EDS request verbatim.
    [eds] = stream.on_request(
        req(EDS, nonce=eds_nonce, version=changed.version(EDS), names=(POOL,)), changed
    )
    assert eds.type_url == EDS and len(eds.resources) == 1
    # Its ACK is then a plain ACK again.
    assert stream.on_request(
        req(EDS, nonce=eds.nonce, version=eds.version_info, names=(POOL,)), changed
    ) == []


def test_sotw_answers_when_subscribed_names_change() -> None:
    stream, _, eds_nonce = subscribed_sotw(snap())
    [eds] = stream.on_request(req(EDS, nonce=eds_nonce, names=()), snap())
    assert len(eds.resources) == 0


def dreq(type_url: str, *, nonce: str = "", subscribe: tuple[str, ...] = (),
         initial: dict[str, str] | None = None,
         error: str | None = None) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url, response_nonce=nonce,
        resource_names_subscribe=list(subscribe),
        initial_resource_versions=initial or {},
    )
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return request


def test_delta_sends_only_differences_and_removals() -> None:
    snapshot = snap()
    stream = DeltaStream("d")
    [cds] = stream.on_request(dreq(CDS), snapshot)
    [eds] = stream.on_request(dreq(EDS, subscribe=(POOL,)), snapshot)
    assert [r.name for r in cds.resources] == [POOL] and len(eds.resources) == 1
    assert stream.on_request(dreq(CDS, nonce=cds.nonce), snapshot) == []
    [push] = stream.on_snapshot(snap((9001, 9002)))
    assert push.type_url == EDS
    empty = Snapshot.build([], [])
    pushes = stream.on_snapshot(empty)
    assert [list(p.removed_resources) for p in pushes] == [[POOL], [POOL]]


def test_delta_reconnect_with_current_versions_gets_nothing() -> None:
    snapshot = snap()
    stream = DeltaStream("d")
    cds_versions = {POOL: snapshot.resources(CDS)[POOL].version}
    assert stream.on_request(dreq(CDS, initial=cds_versions), snapshot) == []


def test_delta_changed_cluster_is_followed_by_its_assignment_unasked() -> None:
    stream = DeltaStream("d")
    stream.on_request(dreq(CDS), snap())
    stream.on_request(dreq(EDS, subscribe=(POOL,)), snap())
    pushes = stream.on_snapshot(snap(connect_s=3.0))
    assert [p.type_url for p in pushes] == [CDS, EDS]
    assert [r.name for r in pushes[1].resources] == [POOL]


def test_delta_nack_is_counted_and_not_resent(caplog: pytest.LogCaptureFixture) -> None:
    stream = DeltaStream("d")
    stream.on_request(dreq(CDS), snap())
    bad = snap(connect_s=3.0)
    [push] = stream.on_snapshot(bad)
    with caplog.at_level(logging.WARNING, logger="corral.xds"):
        assert stream.on_request(dreq(CDS, nonce=push.nonce, error="nope"), bad) == []
    assert "nope" in caplog.text
    assert stream.on_snapshot(bad) == []
