"""Control-plane faults on the real stack: ``corral serve`` SIGKILLed under load
and started again, and Envoy's ADS stream cut.

Envoy fails open (``envoy.failure_mode_allow``): while the ext_proc server is
gone, requests go to the pool cluster's round robin over the endpoints Envoy
last received, so clients keep being served; once the control plane is back,
Envoy reconnects its ADS stream and picking resumes.
"""

from __future__ import annotations

import asyncio
import time

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


def _chat(gateway: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{gateway}/v1/chat/completions",
        timeout=10,
        json={
            "model": MODEL,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": text}],
        },
    )


def _endpoints_in_envoy(stack: FaultStack) -> set[str]:
    """The worker endpoints Envoy holds for the pool, from its admin API."""
    dump = httpx.get(
        f"{stack.envoy_admin}/clusters", params={"format": "json"}, timeout=5
    ).json()
    found: set[str] = set()
    for cluster in dump.get("cluster_statuses", []):
        if not cluster["name"].startswith("corral_pool_"):
            continue
        for host in cluster.get("host_statuses", []):
            address = host["address"]["socket_address"]
            found.add(f"{address['address']}:{address['port_value']}")
    return found


async def test_killing_the_control_plane_under_load_fails_no_request(
    stack: FaultStack,
) -> None:
    sim_ports = ports(3)
    stack.config = base_config(sim_ports)
    stack.start({p: () for p in sim_ports})
    window: dict[str, float] = {}

    async def kill_and_restart() -> None:
        window["killed"] = time.monotonic()
        stack.kill_serve()
        # Stay down long enough for several hundred requests to go fail-open.
        await asyncio.sleep(1.0)
        await asyncio.to_thread(stack.start_serve)
        window["back"] = time.monotonic()

    result = await run_load(
        stack.gateway,
        total=1200,
        concurrency=16,
        interval_s=0.05,
        during=kill_and_restart,
        during_after=100,
        deadline_s=50,
    )
    down_s = window["back"] - window["killed"]
    print(
        f"kill-control-plane: sent={result.sent} statuses={dict(result.statuses)} "
        f"unrouted={result.workers['-']} down={down_s:.1f}s "
        f"p50={result.percentile(0.5) * 1000:.0f}ms "
        f"p99={result.percentile(0.99) * 1000:.0f}ms"
    )
    assert result.sent == 1200
    assert result.failed == 0, (result.statuses, result.failures, stack.logs())
    # Some requests really went through while the control plane was gone.
    assert result.workers["-"] > 0
    # Picking resumes after the restart: answers carry the picked worker again.
    poll(
        lambda: "x-corral-worker" in _chat(stack.gateway, "after").headers,
        20,
        "routed answers after the control plane came back",
    )


async def test_envoy_keeps_its_last_config_while_the_ads_stream_is_cut(
    stack: FaultStack,
) -> None:
    sim_ports = ports(2)
    stack.config = base_config(sim_ports)
    stack.start({p: () for p in sim_ports})
    expected = {f"127.0.0.1:{p}" for p in sim_ports}
    poll(lambda: _endpoints_in_envoy(stack) == expected, 10, "endpoints in Envoy")
    assert stack.envoy_stat("control_plane.connected_state") == 1

    stack.kill_serve()
    poll(
        lambda: stack.envoy_stat("control_plane.connected_state") == 0,
        10,
        "Envoy sees the ADS stream gone",
    )
    # Without the control plane: same clusters and endpoints, and requests are
    # served by both workers through the fallback round robin.
    assert _endpoints_in_envoy(stack) == expected
    result = await run_load(stack.gateway, total=60, concurrency=4, deadline_s=20)
    print(f"ads-cut: sent={result.sent} statuses={dict(result.statuses)}")
    assert result.failed == 0, (result.statuses, result.failures, stack.logs())
    assert _endpoints_in_envoy(stack) == expected

    stack.start_serve()
    poll(
        lambda: stack.envoy_stat("control_plane.connected_state") == 1,
        20,
        "Envoy reconnects its ADS stream",
    )
    assert _endpoints_in_envoy(stack) == expected
    poll(
        lambda: "x-corral-worker" in _chat(stack.gateway, "after").headers,
        20,
        "routed answers after the control plane came back",
    )
