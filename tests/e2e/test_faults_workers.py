"""Worker faults on the real stack: Envoy from the wheel, ``corral serve`` and one
simulated worker per process, all on 127.0.0.1, under bounded load.

Each test states what the client must see while a worker misbehaves; the counts
of requests sent and failed are what ``docs/resilience.md`` records.
"""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from tests.e2e.test_faults_stack import (
    MODEL,
    FaultStack,
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


async def test_killing_a_worker_under_load_fails_no_non_streaming_request(
    stack: FaultStack,
) -> None:
    sim_ports = ports(3)
    stack.config = base_config(sim_ports)
    stack.start({p: () for p in sim_ports})
    victim = stack.sims[sim_ports[0]]

    def kill() -> None:
        os.kill(victim.pid, signal.SIGKILL)

    result = await run_load(
        stack.gateway, total=300, concurrency=24, during=kill, during_after=60
    )
    print(f"kill-worker: sent={result.sent} statuses={dict(result.statuses)}")
    assert result.sent == 300
    assert result.failed == 0, (result.statuses, result.failures, stack.logs())
    assert victim.exited() is not None


async def test_a_worker_answering_503_opens_its_breaker_and_clients_see_200(
    stack: FaultStack,
) -> None:
    sim_ports = ports(3)
    stack.config = base_config(sim_ports)
    bad = sim_ports[1]
    stack.start({p: ("--error-rate", "1.0") if p == bad else () for p in sim_ports})
    worker_id = f"127.0.0.1:{bad}"
    result = await run_load(stack.gateway, total=60, concurrency=4)
    print(f"503-worker: sent={result.sent} statuses={dict(result.statuses)}")
    assert result.failed == 0, (result.statuses, result.failures, stack.logs())
    assert result.workers[worker_id] == 0
    assert stack.metric("corral_circuit_breaker_open", worker=worker_id) == 1
    # The worker recovers: after open_duration_s a probe succeeds and closes it.
    httpx.post(
        f"http://127.0.0.1:{bad}/sim/faults", json={"error_rate": 0.0}, timeout=5
    ).raise_for_status()

    def closed() -> bool:
        for _ in range(6):
            httpx.post(
                f"{stack.gateway}/v1/chat/completions",
                timeout=10,
                json={
                    "model": MODEL,
                    "max_tokens": 2,
                    "messages": [{"role": "user", "content": "probe"}],
                },
            )
        return stack.metric("corral_circuit_breaker_open", worker=worker_id) == 0

    poll(closed, 20, "the breaker of the recovered worker closes")


async def test_a_hanging_worker_s_requests_succeed_on_another_worker(
    stack: FaultStack,
) -> None:
    """``timeouts.first_byte_s`` becomes the route's ``per_try_idle_timeout``: an
    attempt on a worker that accepts and never answers is ended after it and
    retried on the next worker of the picker's list, so no client sees it."""
    sim_ports = ports(2)
    stack.config = base_config(sim_ports, timeouts={"first_byte_s": 1.0})
    stack.start({p: () for p in sim_ports})
    hung = sim_ports[0]
    httpx.post(
        f"http://127.0.0.1:{hung}/sim/faults", json={"hang": True}, timeout=5
    ).raise_for_status()
    result = await run_load(stack.gateway, total=40, concurrency=4, deadline_s=50)
    print(f"hanging-worker: sent={result.sent} statuses={dict(result.statuses)} "
          f"workers={dict(result.workers)}")
    assert result.failed == 0, (result.statuses, result.failures, stack.logs())
    assert result.workers[f"127.0.0.1:{hung}"] == 0
    # The attempts Envoy ended count against the hung worker: its breaker opened
    # (the gauge exists only once a breaker has opened).
    opened = stack.metric("corral_circuit_breaker_open", worker=f"127.0.0.1:{hung}")
    assert opened is not None, stack.logs()


async def test_a_slow_starting_worker_gets_traffic_only_once_ready(
    stack: FaultStack,
) -> None:
    sim_ports = ports(2)
    stack.config = base_config(sim_ports)
    slow = sim_ports[1]
    stack.start({sim_ports[0]: (), slow: ("--slow-start", "3")})
    result = await run_load(stack.gateway, total=40, concurrency=4)
    print(f"slow-start: sent={result.sent} statuses={dict(result.statuses)}")
    assert result.failed == 0, (result.statuses, result.failures, stack.logs())
    poll(
        lambda: any(
            w["id"] == f"127.0.0.1:{slow}" and w["state"] == "ready"
            for w in httpx.get(f"{stack.admin}/workers", timeout=5).json()["workers"]
        ),
        15,
        "the slow worker becomes ready",
    )
    later = await run_load(stack.gateway, total=40, concurrency=4)
    assert later.failed == 0
    assert later.workers[f"127.0.0.1:{slow}"] > 0
