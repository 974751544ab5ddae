"""``corral serve``'s composition root started and stopped in-process."""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.config import parse_settings
from corral.server import HEALTH_SERVICES, ControlPlane


@pytest.fixture
def settings():
    return parse_settings({
        "grpc": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "models": [{"name": "m"}],
        "load_metrics": {"enabled": False},
    })


async def test_every_service_reports_serving_then_the_port_closes(settings):
    plane = ControlPlane(settings)
    await plane.start()
    target = f"127.0.0.1:{plane.grpc_port}"
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in HEALTH_SERVICES:
                answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        async with httpx.AsyncClient() as client:
            live = await client.get(f"http://127.0.0.1:{plane.admin_port}/healthz")
            ready = await client.get(f"http://127.0.0.1:{plane.admin_port}/readyz")
        assert live.status_code == 200
        assert ready.status_code == 503  # no worker yet: not ready, says why
    finally:
        await plane.stop(grace_s=0.5)
        await plane.stop()  # a second stop is harmless
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
