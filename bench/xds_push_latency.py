"""Median time from a registry change to the EDS push reaching an ADS client.

Runs a grpc.aio AdsServer on 127.0.0.1 with POOL_SIZE workers in one pool, opens
a SotW stream as Envoy would, then adds one worker ROUNDS times and prints the
median and p90 of change -> response received (coalescing window included).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from corral.config.settings import parse_settings
from corral.pool import WorkerRegistry, make_worker
from corral.xds import AdsServer, type_urls

POOL_SIZE = 1000
ROUNDS = 50


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    port = _port()
    registry = WorkerRegistry(["m"])
    for i in range(POOL_SIZE):
        registry.upsert(make_worker(f"http://10.1.{i // 250}.{1 + i % 250}:8000",
                                    models=("m",)))
    ads = AdsServer(registry, parse_settings({}))
    server = grpc.aio.server()
    ads.add_to_server(server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
            channel).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(
            type_url=type_urls.ENDPOINT, resource_names=["corral_pool_m"],
            node=base_pb2.Node(id="bench")))
        response = await call.read()
        samples = []
        for i in range(ROUNDS):
            await call.write(discovery_pb2.DiscoveryRequest(
                type_url=type_urls.ENDPOINT, resource_names=["corral_pool_m"],
                version_info=response.version_info, response_nonce=response.nonce))
            start = time.perf_counter()
            registry.upsert(make_worker(f"http://10.2.0.{1 + i}:8000", models=("m",)))
            response = await asyncio.wait_for(call.read(), timeout=5)
            samples.append(time.perf_counter() - start)
        call.cancel()
    await ads.close()
    await server.stop(0)
    samples.sort()
    print(f"pool={POOL_SIZE} rounds={ROUNDS} push latency median="
          f"{statistics.median(samples) * 1000:.1f}ms "
          f"p90={samples[int(len(samples) * 0.9)] * 1000:.1f}ms")


if __name__ == "__main__":
    asyncio.run(main())
