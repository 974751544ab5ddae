"""Envoy's own error replies are OpenAI error JSON; ext_proc's JSON passes as is.

Real Envoy with the unmodified bootstrap (strip filter included), a pool with no
workers, and a minimal ext_proc servicer on the control-plane server that denies
``/deny`` with an immediate JSON response and lets everything else through.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2

from corral.errors import RateLimited
from corral.pool import WorkerRegistry
from corral.xds import AdsServer
from corral.xds.bootstrap import render_bootstrap
from corral.xds.envoy_process import EnvoyProcess
from tests.e2e.xds_support import MODEL, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

DENIED = RateLimited("slow down", retry_after_s=1)


class _Picker(ep_grpc.ExternalProcessorServicer):
    async def Process(  # noqa: N802 (gRPC method name)
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ep.ProcessingResponse]:
        async for request in request_iterator:
            phase = request.WhichOneof("request")
            if phase == "request_headers":
                path = next(
                    (h.raw_value.decode() for h in request.request_headers.headers.headers
                     if h.key == ":path"), "")
                if path == "/deny":
                    yield ep.ProcessingResponse(immediate_response=ep.ImmediateResponse(
                        status=http_status_pb2.HttpStatus(code=DENIED.status),
                        body=DENIED.body(),
                        headers=ep.HeaderMutation(set_headers=[
                            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(
                                key=k, raw_value=v.encode()))
                            for k, v in DENIED.headers().items()
                        ]),
                    ))
                    return
            yield ep.ProcessingResponse(**{phase: _empty(phase)})


def _empty(phase: str) -> Any:
    if phase.endswith("headers"):
        return ep.HeadersResponse()
    if phase.endswith("body"):
        return ep.BodyResponse()
    return ep.TrailersResponse()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def envoy_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    settings = make_settings(delta=False)
    server = grpc.aio.server()
    ads = AdsServer(WorkerRegistry([MODEL]), settings)
    ads.add_to_server(server)
    ep_grpc.add_ExternalProcessorServicer_to_server(_Picker(), server)
    server.add_insecure_port(str(settings.grpc))
    await server.start()
    envoy = EnvoyProcess(render_bootstrap(settings), tmp_path_factory.mktemp("envoy"))
    try:
        await envoy.start_async()
        yield f"http://{settings.envoy.listen}"
    finally:
        await envoy.stop_async()
        await ads.close()
        await server.stop(0)


async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("content-type", ""), \
            await response.text()


async def test_no_healthy_upstream_is_openai_error_json(envoy_url: str) -> None:
    status, content_type, body = await _get(envoy_url + "/v1/models")
    assert status == 503
    assert content_type.startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "no_healthy_upstream"
    assert error["type"] == "service_unavailable"
    assert "no healthy upstream" in error["message"]


async def test_ext_proc_immediate_json_is_not_wrapped_again(envoy_url: str) -> None:
    status, content_type, body = await _get(envoy_url + "/deny")
    assert status == 429
    assert content_type == "application/json"
    assert json.loads(body) == DENIED.to_openai()
