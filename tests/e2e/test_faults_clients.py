"""Client-side faults and limits on the real stack: many connections at once, a
client that reads slowly, one that goes away mid-stream, and the admission
answers (queue full, queue timeout, rate limit) as a client sees them through
Envoy.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import threading
import time
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from tests.e2e.test_faults_stack import (
    MODEL,
    FaultStack,
    LoadResult,
    base_config,
    envoy_missing,
    poll,
    ports,
    run_load,
    stack,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(envoy_missing() is not None, reason=str(envoy_missing())),
]

__all__ = ["stack"]

CONNECTIONS = 1000


def _raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft descriptor limit (children started afterwards,
    Envoy and the workers, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        pytest.skip(f"cannot raise the descriptor limit to {wanted} (hard {hard})")


def _chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def _idle(stack: FaultStack, sim_ports: list[int]) -> bool:
    return all(
        stack.worker_load(p)["requests"] == 0
        and stack.sim_state(p)["running"] == 0
        for p in sim_ports
    )


async def _burst(gateway: str, count: int, deadline_s: float) -> LoadResult:
    """``count`` chat requests started together, each on its own connection.

    aiohttp rather than httpx: httpx's pool spends seconds of CPU managing a
    thousand connections, which would measure the test client, not the gateway.
    """
    result = LoadResult()
    connector = aiohttp.TCPConnector(limit=count, force_close=True)
    timeout = aiohttp.ClientTimeout(total=deadline_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(n: int) -> None:
            began = time.monotonic()
            try:
                async with session.post(
                    f"{gateway}/v1/chat/completions", json=_chat_body(f"burst {n}")
                ) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            result.statuses[status] += 1
            if status == "200":
                result.latencies.append(time.monotonic() - began)

        result.sent = count
        await asyncio.wait_for(
            asyncio.gather(*(one(n) for n in range(count))), deadline_s
        )
    return result


async def test_a_thousand_concurrent_connections_all_succeed(
    stack: FaultStack,
) -> None:
    _raise_fd_limit(8192)
    sim_ports = ports(3)
    stack.config = base_config(sim_ports)
    stack.start({p: () for p in sim_ports})
    before = stack.envoy_stat("http.corral.downstream_cx_total") or 0
    began = time.monotonic()
    result = await _burst(stack.gateway, CONNECTIONS, deadline_s=50)
    wall = time.monotonic() - began
    opened = (stack.envoy_stat("http.corral.downstream_cx_total") or 0) - before
    print(
        f"1000-connections: sent={result.sent} statuses={dict(result.statuses)} "
        f"connections={opened} wall={wall:.1f}s "
        f"p50={result.percentile(0.5) * 1000:.0f}ms "
        f"p99={result.percentile(0.99) * 1000:.0f}ms "
        f"max={max(result.latencies) * 1000:.0f}ms"
    )
    assert result.failed == 0, (result.statuses, result.failures, stack.logs())
    assert opened >= CONNECTIONS
    poll(lambda: _idle(stack, sim_ports), 10, "every worker idle again")


class SlowReader(threading.Thread):
    """One streamed chat request on a raw socket with a small receive buffer,
    read ``piece`` bytes every ``pause_s``: a client on a very slow link."""

    def __init__(self, port: int, body: dict[str, Any], *, piece: int = 256,
                 pause_s: float = 0.02, limit_s: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.port, self.piece = port, piece
        self.pause_s, self.limit_s = pause_s, limit_s
        self.payload = json.dumps(body).encode()
        self.received = bytearray()
        self.headers_seen = threading.Event()
        self.finished = threading.Event()

    def run(self) -> None:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
                b"content-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(self.payload) + self.payload
            )
            deadline = time.monotonic() + self.limit_s
            while time.monotonic() < deadline:
                data = sock.recv(self.piece)
                if not data:
                    break
                self.received += data
                if b"\r\n\r\n" in self.received:
                    self.headers_seen.set()
                if self.received.endswith(b"\r\n0\r\n\r\n"):
                    break  # the last chunk of a chunked body
                time.sleep(self.pause_s)
        self.finished.set()


async def test_a_slow_reading_client_disturbs_no_one_and_frees_its_worker(
    stack: FaultStack,
) -> None:
    sim_ports = ports(2)
    stack.config = base_config(sim_ports)
    stack.start({p: () for p in sim_ports})
    port = stack.config["envoy"]["listen"]["port"]
    reader = SlowReader(
        port, _chat_body("read me slowly", max_tokens=400, ignore_eos=True, stream=True)
    )
    reader.start()
    assert await asyncio.to_thread(reader.headers_seen.wait, 10)
    result = await run_load(stack.gateway, total=80, concurrency=8, deadline_s=30)
    print(
        f"slow-reader: others sent={result.sent} statuses={dict(result.statuses)} "
        f"p50={result.percentile(0.5) * 1000:.0f}ms "
        f"p99={result.percentile(0.99) * 1000:.0f}ms"
    )
    assert result.failed == 0, (result.statuses, result.failures, stack.logs())
    # The worker finished long before the reader: Envoy holds the rest of the
    # answer, and the worker's slot (engine and gateway count) is free already.
    poll(lambda: _idle(stack, sim_ports), 10, "workers idle while the reader reads")
    assert not reader.finished.is_set(), "the reader was not slow enough to tell"
    assert await asyncio.to_thread(reader.finished.wait, 30)
    text = bytes(reader.received)
    assert text.startswith(b"HTTP/1.1 200"), text[:200]
    assert b"data: [DONE]" in text
    assert _idle(stack, sim_ports)


async def test_a_client_leaving_mid_stream_cancels_the_worker_promptly(
    stack: FaultStack,
) -> None:
    sim_ports = ports(2)
    stack.config = base_config(sim_ports)
    stack.time_scale = 1.0  # a stream of 2,000 tokens then lasts ~20 s
    stack.start({p: () for p in sim_ports})
    body = _chat_body("a long answer", max_tokens=2000, ignore_eos=True, stream=True)
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            served = int(response.headers["x-corral-worker"].rsplit(":", 1)[1])
            chunks = 0
            async for _ in response.aiter_raw():
                chunks += 1
                if chunks >= 5:
                    break
            assert stack.sim_state(served)["running"] == 1
            assert stack.worker_load(served)["requests"] == 1
        # Leaving the block closes the connection mid-stream.
        left = time.monotonic()
    poll(lambda: stack.sim_state(served)["running"] == 0, 5, "the worker cancels")
    engine_s = time.monotonic() - left
    poll(lambda: stack.worker_load(served)["requests"] == 0, 5, "in-flight back to 0")
    gateway_s = time.monotonic() - left
    print(f"client-disconnect: engine cancel {engine_s * 1000:.0f}ms, "
          f"gateway in-flight 0 after {gateway_s * 1000:.0f}ms")
    assert _idle(stack, sim_ports)


async def test_admission_refusals_reach_the_client_with_status_and_json(
    stack: FaultStack,
) -> None:
    sim_ports = ports(2)
    stack.config = base_config(
        sim_ports,
        admission={
            "max_concurrent": 1,
            "queue_size": 1,
            "queue_timeout_s": 1.0,
            "rate_limit_requests_per_s": 0.1,
            "rate_limit_request_burst": 2,
            "tenant_header": "x-tenant-id",
        },
    )
    stack.start({p: () for p in sim_ports})

    # Rate limit: a tenant's burst of 2 passes, the third is 429 with Retry-After.
    sdk = openai.OpenAI(
        base_url=f"{stack.gateway}/v1", api_key="unused", max_retries=0,
        default_headers={"x-tenant-id": "limited"},
    )
    messages: Any = [{"role": "user", "content": "hello"}]
    for _ in range(2):
        sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    assert refused.value.status_code == 429
    assert refused.value.code == "rate_limit_exceeded"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.response.json()["error"]["type"] == "rate_limit_error"
    other = httpx.post(
        f"{stack.gateway}/v1/chat/completions", json=_chat_body("other tenant"),
        headers={"x-tenant-id": "someone-else"}, timeout=10,
    )
    assert other.status_code == 200

    # Queue: one request holds the only slot (its worker hangs), one waits, the
    # next is refused at once (429); the waiter times out (503).
    for p in sim_ports:
        httpx.post(f"http://127.0.0.1:{p}/sim/faults", json={"hang": True},
                   timeout=5).raise_for_status()
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:

        def send(tenant: str) -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(client.post(
                "/v1/chat/completions", json=_chat_body(tenant),
                headers={"x-tenant-id": tenant},
            ))

        holder = send("holder")
        await asyncio.to_thread(
            poll, lambda: sum(stack.sim_state(p)["requests"] for p in sim_ports) >= 4,
            10, "the holder reached a worker",
        )
        waiter = send("waiter")
        await asyncio.to_thread(
            poll,
            lambda: stack.metric("corral_admission_queue_depth", model=MODEL) == 1,
            10,
            "the waiter is queued",
        )
        full = await client.post(
            "/v1/chat/completions", json=_chat_body("full"),
            headers={"x-tenant-id": "third"},
        )
        timed_out = await waiter
        holder.cancel()
    _check_refusal(full, 429, "admission_queue_full", "rate_limit_error")
    _check_refusal(timed_out, 503, "admission_queue_timeout", "service_unavailable")
    print(f"admission: rate limit 429 retry-after="
          f"{refused.value.response.headers['retry-after']}; queue full "
          f"{full.status_code}; queue timeout {timed_out.status_code}")

    # The cancelled holder gave its slot back: with the workers well, a new
    # request is admitted and served.
    for p in sim_ports:
        httpx.post(f"http://127.0.0.1:{p}/sim/faults", json={"hang": False},
                   timeout=5).raise_for_status()
    poll(lambda: _idle(stack, sim_ports), 10, "the holder's slot released")
    again = httpx.post(
        f"{stack.gateway}/v1/chat/completions", json=_chat_body("again"),
        headers={"x-tenant-id": "fresh"}, timeout=10,
    )
    assert again.status_code == 200, again.text


def _check_refusal(
    response: httpx.Response, status: int, code: str, error_type: str
) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == error_type
    assert error["message"]
