"""Corral as the endpoint picker of a mesh's Envoy, written the way Envoy Gateway
and Istio configure an InferencePool (not Corral's own bootstrap).

The Envoy here: the ext_proc filter in FULL_DUPLEX_STREAMED for both bodies,
headers and trailers SEND, ``allow_mode_override: false``, failing closed,
receiving metadata namespace ``envoy.lb``; one route to one STATIC cluster of
simulated workers whose load balancer is ``override_host`` reading only the
metadata ``envoy.lb`` / ``x-gateway-destination-endpoint`` (round robin when
no override), and recording the served endpoint with ``selected_host_key``. A
second listener adds a subset hint with ``set_metadata`` that allows one worker.

Corral is an in-process ``ControlPlane`` with static workers; the picker's
choice is read from its decision log record, matched by request id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from corral.config.settings import parse_settings
from corral.server import ControlPlane
from corral.simulator.config import SimConfig
from corral.simulator.server import SimWorker
from corral.xds.envoy_process import EnvoyProcess
from tests.conftest import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(120),
]

MODEL = "mesh-model"
WORKERS = 3
MiB = 1024 * 1024


def _ext_proc_filter(grpc_cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3."
            "ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": grpc_cluster},
                "timeout": "10s",
            },
            "failure_mode_allow": False,
            "allow_mode_override": False,
            "message_timeout": "30s",
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": "FULL_DUPLEX_STREAMED",
                "response_body_mode": "FULL_DUPLEX_STREAMED",
                "request_trailer_mode": "SEND",
                "response_trailer_mode": "SEND",
            },
            "metadata_options": {
                "receiving_namespaces": {"untyped": ["envoy.lb"]},
                "forwarding_namespaces": {
                    "untyped": ["envoy.lb", "envoy.lb.subset_hint"]
                },
            },
        },
    }


def _listener(name: str, port: int, subset: list[str] | None) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    if subset is not None:
        filters.append(
            {
                "name": "envoy.filters.http.set_metadata",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http."
                    "set_metadata.v3.Config",
                    "metadata": [
                        {
                            "metadata_namespace": "envoy.lb.subset_hint",
                            "value": {"x-gateway-destination-endpoint-subset": subset},
                        }
                    ],
                },
            }
        )
    filters.append(_ext_proc_filter("epp"))
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3."
                "Router"
            },
        }
    )
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "per_connection_buffer_limit_bytes": 32768,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters."
                            "network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "preserve_external_request_id": True,
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "pool",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "route": {
                                                    "cluster": "pool",
                                                    "timeout": "0s",
                                                },
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": filters,
                        },
                    }
                ]
            }
        ],
    }


def _endpoints(ports: list[int]) -> dict[str, Any]:
    return {
        "cluster_name": "pool",
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {
                                    "address": "127.0.0.1",
                                    "port_value": port,
                                }
                            }
                        }
                    }
                    for port in ports
                ]
            }
        ],
    }


def mesh_bootstrap(
    *, listen: int, hinted: int, admin: int, epp: int, workers: list[int]
) -> dict[str, Any]:
    """The hand-written mesh configuration (docs/mesh.md shows the same)."""
    pool = {
        "name": "pool",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": _endpoints(workers),
        "load_balancing_policy": {
            "policies": [
                {
                    "typed_extension_config": {
                        "name": "envoy.load_balancing_policies.override_host",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions."
                            "load_balancing_policies.override_host.v3.OverrideHost",
                            "override_host_sources": [
                                {
                                    "metadata": {
                                        "key": "envoy.lb",
                                        "path": [
                                            {"key": "x-gateway-destination-endpoint"}
                                        ],
                                    }
                                }
                            ],
                            "selected_host_key": {
                                "key": "envoy.lb",
                                "path": [
                                    {"key": "x-gateway-destination-endpoint-served"}
                                ],
                            },
                            "fallback_policy": {
                                "policies": [
                                    {
                                        "typed_extension_config": {
                                            "name": "envoy.load_balancing_policies."
                                            "round_robin",
                                            "typed_config": {
                                                "@type": "type.googleapis.com/envoy."
                                                "extensions.load_balancing_policies."
                                                "round_robin.v3.RoundRobin"
                                            },
                                        }
                                    }
                                ]
                            },
                        },
                    }
                }
            ]
        },
    }
    epp_cluster = {
        "name": "epp",
        "type": "STATIC",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "epp",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": "127.0.0.1",
                                        "port_value": epp,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}
        },
        "static_resources": {
            "listeners": [
                _listener("mesh", listen, None),
                _listener("mesh_hinted", hinted, [f"127.0.0.1:{workers[-1]}"]),
            ],
            "clusters": [pool, epp_cluster],
        },
    }


class PickLog(logging.Handler):
    """The picker's primary choice per request id, from its decision record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.picks: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("request %s model=") and record.args:
            args = record.args
            assert isinstance(args, tuple)
            self.picks[str(args[0])] = str(args[2])


class Mesh:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sims: list[SimWorker] = []
        self.control: ControlPlane | None = None
        self.envoy: EnvoyProcess | None = None
        self.picks = PickLog()
        self._level = logging.NOTSET
        self.url = ""
        self.hinted_url = ""

    async def start(self) -> None:
        for _ in range(WORKERS):
            sim = SimWorker(
                SimConfig(
                    model=MODEL,
                    port=free_port(),
                    max_model_len=4_000_000,
                    time_scale=0.01,
                    min_output_tokens=2,
                    max_output_tokens=8,
                )
            )
            await sim.start()
            self.sims.append(sim)
        settings = parse_settings(
            {
                "grpc": {"port": free_port()},
                "admin": {"port": free_port()},
                "models": [
                    {
                        "name": MODEL,
                        "tokenizer": "builtin",
                        "policy": {"name": "cache_aware"},
                    }
                ],
                "workers": [{"url": sim.url, "model": MODEL} for sim in self.sims],
                "health_check": {"interval_s": 0.2},
            }
        )
        stream_logger = logging.getLogger("corral.extproc.stream")
        self._level = stream_logger.level
        stream_logger.setLevel(logging.DEBUG)
        stream_logger.addHandler(self.picks)
        self.control = ControlPlane(settings)
        await self.control.start()
        deadline = time.monotonic() + 15
        while len(self.control.registry.ready_workers(MODEL)) < WORKERS:
            assert time.monotonic() < deadline, "workers never became ready"
            await asyncio.sleep(0.05)
        listen, hinted = free_port(), free_port()
        bootstrap = mesh_bootstrap(
            listen=listen,
            hinted=hinted,
            admin=free_port(),
            epp=settings.grpc.port,
            workers=[sim.port for sim in self.sims],
        )
        self.envoy = EnvoyProcess(bootstrap, self.tmp)
        await self.envoy.start_async()
        self.url = f"http://127.0.0.1:{listen}"
        self.hinted_url = f"http://127.0.0.1:{hinted}"

    async def stop(self) -> None:
        if self.envoy is not None:
            await self.envoy.stop_async()
        if self.control is not None:
            await self.control.stop(0.5)
        for sim in self.sims:
            await sim.stop()
        stream_logger = logging.getLogger("corral.extproc.stream")
        stream_logger.removeHandler(self.picks)
        stream_logger.setLevel(self._level)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    running = Mesh(tmp_path_factory.mktemp("mesh"))
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


def _client(mesh: Mesh) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{mesh.url}/v1", api_key="unused", max_retries=0
    )


def _rid(label: str) -> str:
    return f"mesh-{label}-{time.monotonic_ns()}"


async def test_chat_and_completions_streamed_or_not_go_where_the_picker_said(
    mesh: Mesh,
) -> None:
    async with _client(mesh) as client:
        for index in range(8):
            rid = _rid(f"kind{index}")
            headers = {"x-request-id": rid}
            stream = index % 2 == 1
            prompt = f"request {index}: {'lorem ipsum ' * (index + 1)}"
            if index % 4 < 2:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=4,
                    stream=stream,
                    extra_headers=headers,
                )
            else:
                raw = await client.completions.with_raw_response.create(
                    model=MODEL,
                    prompt=prompt,
                    max_tokens=4,
                    stream=stream,
                    extra_headers=headers,
                )
            worker = raw.headers["x-corral-sim-worker"]
            result = raw.parse()
            if stream:
                chunks = [chunk async for chunk in result]
                assert chunks, "a streamed answer had no chunks"
            else:
                assert result.choices
            assert mesh.picks.picks[rid] == worker
            # Corral learnt the served endpoint from the mesh's metadata.
            assert raw.headers["x-corral-worker"] == worker
    assert mesh.control is not None
    for worker in {s.id for s in mesh.sims}:
        assert mesh.control.registry.load(worker).requests == 0


async def test_growing_conversation_sticks_to_one_worker(mesh: Mesh) -> None:
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "You answer briefly. " * 40}
    ]
    workers = []
    async with _client(mesh) as client:
        for turn in range(4):
            rid = _rid(f"turn{turn}")
            messages.append({"role": "user", "content": f"question {turn} " * 20})
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=messages,
                max_tokens=4,
                extra_headers={"x-request-id": rid},
            )
            answer = raw.parse()
            messages.append(
                {
                    "role": "assistant",
                    "content": answer.choices[0].message.content or "",
                }
            )
            worker = raw.headers["x-corral-sim-worker"]
            assert mesh.picks.picks[rid] == worker
            workers.append(worker)
    assert len(set(workers)) == 1, workers


async def test_one_mib_prompt_arrives_whole(mesh: Mesh) -> None:
    prompt = "".join(
        hashlib.sha256(str(i).encode()).hexdigest() + " " for i in range(MiB // 65 + 1)
    )
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1}).encode()
    assert len(body) > MiB
    rid = _rid("big")
    async with httpx.AsyncClient(timeout=60) as http:
        through = await http.post(
            f"{mesh.url}/v1/completions",
            content=body,
            headers={"content-type": "application/json", "x-request-id": rid},
        )
        assert through.status_code == 200, through.text[:300]
        worker = through.headers["x-corral-sim-worker"]
        assert mesh.picks.picks[rid] == worker
        sim = next(s for s in mesh.sims if s.id == worker)
        direct = await http.post(
            f"{sim.url}/v1/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert direct.status_code == 200
    prompt_tokens = through.json()["usage"]["prompt_tokens"]
    assert prompt_tokens > 100_000
    assert prompt_tokens == direct.json()["usage"]["prompt_tokens"]


async def test_subset_hint_keeps_every_pick_inside_it(mesh: Mesh) -> None:
    allowed = mesh.sims[-1].id
    async with openai.AsyncOpenAI(
        base_url=f"{mesh.hinted_url}/v1", api_key="unused", max_retries=0
    ) as client:
        for index in range(4):
            rid = _rid(f"hint{index}")
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[
                    {"role": "user", "content": f"hinted {index} " * (index + 1)}
                ],
                max_tokens=2,
                extra_headers={"x-request-id": rid},
            )
            raw.parse()
            assert raw.headers["x-corral-sim-worker"] == allowed
            assert mesh.picks.picks[rid] == allowed


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        (b'{"model": "mesh-model", "messages": [', 400, "invalid_request_error"),
        (
            json.dumps(
                {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
            404,
            "invalid_request_error",
        ),
    ],
    ids=["bad-json", "unknown-model"],
)
async def test_errors_come_back_as_openai_json(
    mesh: Mesh, body: bytes, status: int, error_type: str
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{mesh.url}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["message"]
    assert "x-corral-sim-worker" not in response.headers
