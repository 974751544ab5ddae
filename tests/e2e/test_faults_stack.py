"""The stack the fault tests share: Envoy from the wheel, ``corral serve`` and one
simulated worker per process, each started (and killed) on its own, all on
127.0.0.1. This module holds no tests; ``test_faults_*.py`` import from it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from corral.commands._processes import Child, corral_argv, wait_http_ok
from corral.config import parse_settings
from corral.envoy_binary import find_envoy
from corral.errors import ConfigError
from corral.xds.bootstrap import render_bootstrap
from tests.conftest import free_port


def envoy_missing() -> str | None:
    """Why Envoy cannot run here, or ``None`` when its binary is installed."""
    try:
        find_envoy()
    except ConfigError as exc:
        return str(exc)
    return None


MODEL = "corral-demo"
STARTUP_S = 60.0


@dataclass
class FaultStack:
    """The processes of one test and where they listen."""

    tmp: Path
    config: dict[str, Any]
    sims: dict[int, Child] = field(default_factory=dict)
    serve: Child | None = None
    envoy: Child | None = None
    time_scale: float = 0.02
    """Speed of the simulated workers' time (1.0: as slow as a real engine)."""

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.config['envoy']['listen']['port']}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.config['admin']['port']}"

    def start_sim(self, port: int, *flags: str) -> None:
        self.sims[port] = Child(
            f"sim {port}",
            corral_argv(
                "sim",
                "--port",
                str(port),
                "--model",
                MODEL,
                "--time-scale",
                str(self.time_scale),
                "--log-level",
                "WARNING",
                *flags,
            ),
            self.tmp / f"sim-{port}.log",
        )

    def start_serve(self) -> None:
        self.serve = Child(
            "corral serve",
            corral_argv("serve", "--config", str(self.tmp / "corral.yaml")),
            self.tmp / "serve.log",
        )
        wait_http_ok(f"{self.admin}/healthz", timeout_s=STARTUP_S, child=self.serve)

    def start(self, sim_flags: dict[int, tuple[str, ...]]) -> None:
        for port, flags in sim_flags.items():
            self.start_sim(port, *flags)
        for port, child in self.sims.items():
            if "--slow-start" not in sim_flags[port]:
                wait_http_ok(
                    f"http://127.0.0.1:{port}/v1/models",
                    timeout_s=STARTUP_S,
                    child=child,
                )
        (self.tmp / "corral.yaml").write_text(yaml.safe_dump(self.config))
        self.start_serve()
        bootstrap = self.tmp / "envoy.yaml"
        bootstrap.write_text(
            yaml.safe_dump(render_bootstrap(parse_settings(self.config)))
        )
        self.envoy = Child(
            "envoy",
            [
                str(find_envoy()), "-c", str(bootstrap), "--use-dynamic-base-id",
                "-l", "warning", "--concurrency", "2",
            ],
            self.tmp / "envoy.log",
        )
        admin = self.config["envoy"]["admin"]["port"]
        wait_http_ok(
            f"http://127.0.0.1:{admin}/ready", timeout_s=STARTUP_S, child=self.envoy
        )
        wait_http_ok(f"{self.admin}/readyz", timeout_s=STARTUP_S, child=self.serve)

    @property
    def envoy_admin(self) -> str:
        return f"http://127.0.0.1:{self.config['envoy']['admin']['port']}"

    def worker_load(self, port: int) -> dict[str, Any]:
        """The gateway's view of one worker's load (admin ``GET /workers``)."""
        for worker in httpx.get(f"{self.admin}/workers", timeout=5).json()["workers"]:
            if worker["id"] == f"127.0.0.1:{port}":
                return dict(worker["load"])
        raise AssertionError(f"worker 127.0.0.1:{port} not in the registry")

    def sim_state(self, port: int) -> dict[str, Any]:
        """The simulated engine's own view: running and waiting requests."""
        return dict(httpx.get(f"http://127.0.0.1:{port}/sim/state", timeout=5).json())

    def kill_serve(self) -> None:
        """SIGKILL the control plane (no shutdown of any kind) and reap it."""
        assert self.serve is not None
        self.serve.process.kill()
        self.serve.process.wait(timeout=10)
        self.serve.stop()

    def envoy_stat(self, name: str) -> int | None:
        text = httpx.get(
            f"{self.envoy_admin}/stats", params={"filter": f"^{name}$"}, timeout=5
        ).text
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return None

    def stop(self) -> None:
        for child in (self.envoy, self.serve, *self.sims.values()):
            if child is not None:
                child.stop(grace_s=5)

    def metric(self, name: str, **labels: str) -> float | None:
        text = httpx.get(f"{self.admin}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and all(
                f'{k}="{v}"' in line for k, v in labels.items()
            ):
                return float(line.rsplit(" ", 1)[1])
        return None

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )


def base_config(ports: list[int], **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "grpc": {"host": "127.0.0.1", "port": unique_port()},
        "admin": {"host": "127.0.0.1", "port": unique_port()},
        "envoy": {
            "listen": {"host": "127.0.0.1", "port": unique_port()},
            "admin": {"host": "127.0.0.1", "port": unique_port()},
        },
        "models": [
            {"name": MODEL, "tokenizer": "builtin", "policy": {"name": "round_robin"}}
        ],
        "workers": [{"url": f"http://127.0.0.1:{p}", "model": MODEL} for p in ports],
        "health_check": {"interval_s": 0.3, "timeout_s": 0.5, "failure_threshold": 2},
        "load_metrics": {"interval_s": 0.5},
        "circuit_breaker": {"failure_threshold": 3, "open_duration_s": 1.5},
        "logging": {"level": "WARNING"},
    }
    config.update(extra)
    return config


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    made = FaultStack(tmp=tmp_path, config={})
    yield made
    made.stop()


_HANDED_OUT: set[int] = set()


def unique_port() -> int:
    """A free port on 127.0.0.1 never handed out before in this test run, so the
    workers, Envoy and the control plane of one test never pick the same one."""
    while True:
        port = free_port()
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def ports(count: int) -> list[int]:
    return [unique_port() for _ in range(count)]


@dataclass
class LoadResult:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    workers: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    """Seconds from sending to the last byte, of the requests answered 200."""
    failures: list[str] = field(default_factory=list)
    """Status and body start of each failed request, for the assertion message."""

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "200")


async def run_load(
    gateway: str,
    total: int,
    concurrency: int,
    *,
    stream: bool = False,
    max_tokens: int = 8,
    deadline_s: float = 60.0,
    during: Any = None,
    during_after: int = 0,
    interval_s: float = 0.0,
) -> LoadResult:
    """Send ``total`` chat requests, ``concurrency`` at a time, bounded in time;
    call ``during()`` once ``during_after`` requests have completed (a coroutine
    it returns runs alongside the load and is awaited before returning). Each
    of the ``concurrency`` lanes waits ``interval_s`` between its requests, which
    spreads a fixed count over a known stretch of time."""
    result = LoadResult()
    side: list[asyncio.Future[Any]] = []
    done = 0
    fired = asyncio.Event()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(total):
        queue.put_nowait(n)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=gateway, timeout=30, limits=limits) as client:

        async def one(n: int) -> None:
            nonlocal done
            body = {
                "model": MODEL,
                "max_tokens": max_tokens,
                "stream": stream,
                "messages": [{"role": "user", "content": f"request {n} of the run"}],
            }
            result.sent += 1
            began = time.monotonic()
            detail = ""
            try:
                async with client.stream(
                    "POST", "/v1/chat/completions", json=body
                ) as response:
                    await response.aread()
                    status = str(response.status_code)
                    if stream and status == "200" and b"[DONE]" not in response.content:
                        status = "truncated-stream"
                    detail = response.text[:300]
                    result.workers[response.headers.get("x-corral-worker", "-")] += 1
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            result.statuses[status] += 1
            if status != "200" and len(result.failures) < 5:
                result.failures.append(f"{status} {detail}")
            if status == "200":
                result.latencies.append(time.monotonic() - began)
            done += 1
            if during is not None and done >= during_after and not fired.is_set():
                fired.set()
                outcome = during()
                if inspect.isawaitable(outcome):
                    side.append(asyncio.ensure_future(outcome))

        async def worker() -> None:
            while not queue.empty():
                await one(queue.get_nowait())
                if interval_s:
                    await asyncio.sleep(interval_s)

        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(concurrency))), deadline_s
        )
        for task in side:
            await asyncio.wait_for(task, deadline_s)
    return result


def poll(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened within {timeout_s}s: {what}")


