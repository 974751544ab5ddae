"""The ADS service over a real grpc.aio channel on 127.0.0.1: bursts coalesce.

Push latency is measured by ``bench/xds_push_latency.py``, not here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest_asyncio
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from corral.config.settings import parse_settings
from corral.pool import WorkerRegistry, make_worker
from corral.xds import AdsServer, type_urls
from tests.conftest import free_port

POOL = "corral_pool_m"


@pytest_asyncio.fixture
async def channel() -> AsyncIterator[tuple[WorkerRegistry, grpc.aio.Channel]]:
    port = free_port()
    registry = WorkerRegistry(["m"])
    ads = AdsServer(registry, parse_settings({"grpc": {"port": port}}))
    server = grpc.aio.server()
    ads.add_to_server(server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield registry, chan
    await ads.close()
    await server.stop(0)


async def test_a_burst_of_1000_adds_becomes_a_few_pushes(
    channel: tuple[WorkerRegistry, grpc.aio.Channel],
) -> None:
    registry, chan = channel
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(chan).StreamAggregatedResources()
    node = base_pb2.Node(id="test")
    await call.write(discovery_pb2.DiscoveryRequest(type_url=type_urls.CLUSTER, node=node))
    cds = await call.read()
    await call.write(discovery_pb2.DiscoveryRequest(
        type_url=type_urls.ENDPOINT, resource_names=[POOL]))
    eds = await call.read()
    for response in (cds, eds):
        await call.write(discovery_pb2.DiscoveryRequest(
            type_url=response.type_url, version_info=response.version_info,
            response_nonce=response.nonce,
            resource_names=[POOL] if response.type_url == type_urls.ENDPOINT else []))

    for i in range(1000):
        registry.upsert(make_worker(f"http://10.0.{i // 250}.{1 + i % 250}:8000",
                                    models=("m",)))
        if i % 100 == 0:
            await asyncio.sleep(0)  # the adds span several loop turns
    pushes = 0
    endpoints = 0
    while endpoints < 1000:
        response = await asyncio.wait_for(call.read(), timeout=2.0)
        assert response.type_url == type_urls.ENDPOINT
        pushes += 1
        cla = endpoint_pb2.ClusterLoadAssignment()
        response.resources[0].Unpack(cla)
        endpoints = sum(len(locality.lb_endpoints) for locality in cla.endpoints)
    assert pushes <= 3
    call.cancel()
