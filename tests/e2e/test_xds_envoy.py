"""The ADS server against a real Envoy 1.40, state of the world and Delta.

One control plane and one Envoy per mode serve every test of the module, in
order; the restart test comes last because it replaces the control plane.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from corral.observability import metrics
from corral.pool import WorkerState, make_worker
from corral.xds import type_urls
from corral.xds.names import DESTINATION_HEADER, POOL_HEADER
from tests.e2e.xds_support import MODEL, Stack, Worker, add_ready_worker, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sotw", "delta"])
async def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    mode = request.param
    stack = Stack(tmp_path_factory.mktemp(f"envoy-{mode}"), delta=mode == "delta")
    await stack.control.start()
    try:
        await stack.envoy.start_async()
        yield stack
    finally:
        await stack.envoy.stop_async()
        await stack.control.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def workers() -> AsyncIterator[list[Worker]]:
    started = [Worker(f"w{i}") for i in range(3)]
    for worker in started:
        await worker.start()
    yield started
    for worker in started:
        await worker.stop()


async def _get(stack: Stack, path: str, pin: Worker | None = None) -> tuple[int, str]:
    headers = {POOL_HEADER: MODEL}
    if pin is not None:
        headers[DESTINATION_HEADER] = f"127.0.0.1:{pin.port}"
    async with aiohttp.ClientSession() as session, session.get(
        stack.base_url + path, headers=headers
    ) as response:
        return response.status, await response.text()


def _pushes(kind: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "corral_xds_pushes_total", {"type": kind}
    ) or 0.0


def _nacks(kind: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "corral_xds_nacks_total", {"type": kind}
    ) or 0.0


async def test_added_worker_shows_up_within_a_second_and_takes_traffic(
    stack: Stack, workers: list[Worker]
) -> None:
    await add_ready_worker(stack.registry, workers[0])
    await add_ready_worker(stack.registry, workers[1])
    expected = {f"127.0.0.1:{workers[0].port}", f"127.0.0.1:{workers[1].port}"}

    async def present() -> bool:
        return expected <= await stack.cluster_hosts()

    await eventually(present, timeout_s=1.0, what="workers in /clusters")
    assert await _get(stack, "/id", pin=workers[1]) == (200, "w1")
    assert await _get(stack, "/id", pin=workers[0]) == (200, "w0")


async def test_removed_worker_disappears_while_its_sse_stream_completes(
    stack: Stack, workers: list[Worker]
) -> None:
    worker_id = await add_ready_worker(stack.registry, workers[2])
    address = f"127.0.0.1:{workers[2].port}"

    async def present() -> bool:
        return address in await stack.cluster_hosts()

    await eventually(present, timeout_s=1.0, what="w2 in /clusters")
    headers = {POOL_HEADER: MODEL, DESTINATION_HEADER: address}
    events: list[str] = []
    async with aiohttp.ClientSession() as session, session.get(
        stack.base_url + "/sse?n=10&gap=0.05", headers=headers
    ) as response:
        assert response.status == 200
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            events.append(line.decode().strip())
            if len(events) == 1:
                stack.registry.remove(worker_id)

                async def gone() -> bool:
                    return address not in await stack.cluster_hosts()

                await eventually(gone, timeout_s=1.0, what="w2 leaves /clusters")
    assert events == [f"data: w2 {i}" for i in range(10)] + ["data: [DONE]"]


async def test_rejected_cluster_is_logged_survived_and_not_pushed_again(
    stack: Stack, workers: list[Worker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="corral.xds")
    nacks_before = _nacks("cds")
    rejected_before = await stack.stat("cluster_manager.cds.update_rejected") or 0

    def invalid(cluster):  # a negative connect timeout is refused by Envoy
        cluster.connect_timeout.seconds = -1

    assert stack.control.ads is not None
    stack.control.ads.set_cluster_hook(invalid)

    async def nacked() -> bool:
        return _nacks("cds") > nacks_before

    await eventually(nacked, timeout_s=2.0, what="a CDS NACK")
    assert any(
        "rejected" in r.getMessage() and "Invalid duration" in r.getMessage()
        for r in caplog.records if r.levelno == logging.WARNING
    ), [r.getMessage() for r in caplog.records]
    assert (await stack.stat("cluster_manager.cds.update_rejected") or 0) > rejected_before
    # The old cluster keeps serving.
    assert await _get(stack, "/id", pin=workers[0]) == (200, "w0")
    # No push loop: the rejected content is not sent again. Nothing can be polled
    # for an absence, so this waits a fixed half second and compares counts.
    pushes = _pushes("cds")
    await asyncio.sleep(0.5)
    assert _pushes("cds") == pushes
    assert _nacks("cds") == nacks_before + 1

    stack.control.ads.set_cluster_hook(None)
    version = stack.control.ads.snapshot.version(type_urls.CLUSTER)

    async def fixed() -> bool:
        text = await stack.admin("/stats?filter=cluster_manager.cds.version_text")
        return version in text

    await eventually(fixed, timeout_s=1.0, what="the fixed version accepted")


async def test_changed_cluster_is_not_left_warming(
    stack: Stack, workers: list[Worker]
) -> None:
    assert stack.control.ads is not None
    modified_before = await stack.stat("cluster_manager.cluster_modified") or 0

    def tweak(cluster):  # a valid change: Envoy re-warms the cluster
        cluster.connect_timeout.nanos = 1_000_000

    stack.control.ads.set_cluster_hook(tweak)

    async def modified_and_warm() -> bool:
        modified = await stack.stat("cluster_manager.cluster_modified") or 0
        warming = await stack.stat("cluster_manager.warming_clusters")
        return modified > modified_before and warming == 0

    await eventually(modified_and_warm, timeout_s=1.0, what="re-warm finished")
    assert await stack.cluster_hosts() >= {f"127.0.0.1:{workers[0].port}"}
    assert await _get(stack, "/id", pin=workers[1]) == (200, "w1")
    stack.control.ads.set_cluster_hook(None)

    async def settled() -> bool:
        modified = await stack.stat("cluster_manager.cluster_modified") or 0
        return modified >= modified_before + 2 and (
            await stack.stat("cluster_manager.warming_clusters")
        ) == 0

    await eventually(settled, timeout_s=1.0, what="cluster restored")


async def test_a_thousand_endpoints_arrive_in_a_few_pushes(stack: Stack) -> None:
    eds_before = _pushes("eds")
    ids = []
    for i in range(1000):
        worker = make_worker(f"http://127.0.{2 + i // 250}.{1 + i % 250}:9000",
                             models=(MODEL,))
        ids.append(stack.registry.upsert(worker).id)
        stack.registry.set_state(worker.id, WorkerState.READY)

    async def all_there() -> bool:
        return len(await stack.cluster_hosts()) >= 1000 + 2

    await eventually(all_there, timeout_s=5.0, what="1000 endpoints in /clusters")
    assert _pushes("eds") - eds_before <= 3
    for worker_id in ids:
        stack.registry.remove(worker_id)

    async def all_gone() -> bool:
        return len(await stack.cluster_hosts()) == 2

    await eventually(all_gone, timeout_s=5.0, what="1000 endpoints removed")


async def test_control_plane_restart_keeps_traffic_and_converges_without_rewarm(
    stack: Stack, workers: list[Worker]
) -> None:
    assert stack.control.ads is not None
    version = stack.control.ads.snapshot.version(type_urls.CLUSTER)
    modified_before = await stack.stat("cluster_manager.cluster_modified")
    await stack.control.stop()
    # Envoy keeps serving from what it has while the control plane is away.
    assert await _get(stack, "/id", pin=workers[0]) == (200, "w0")
    acks_before = metrics.REGISTRY.get_sample_value(
        "corral_xds_acks_total", {"type": "cds"}) or 0.0
    cds_pushes_before = _pushes("cds")

    await stack.control.start()
    ads = stack.control.ads
    assert ads is not None
    assert ads.snapshot.version(type_urls.CLUSTER) == version

    async def reconnected() -> bool:
        if ads.stream_count != 1:
            return False
        if stack.delta:
            # Envoy names the versions it holds; equal hashes mean nothing to send.
            return True
        acks = metrics.REGISTRY.get_sample_value(
            "corral_xds_acks_total", {"type": "cds"}) or 0.0
        return acks > acks_before

    await eventually(reconnected, timeout_s=10.0, what="Envoy reconnects")
    if stack.delta:
        assert _pushes("cds") == cds_pushes_before
    text = await stack.admin("/stats?filter=cluster_manager.cds.version_text")
    assert version in text
    assert await stack.stat("cluster_manager.cluster_modified") == modified_before
    assert await stack.stat("cluster_manager.warming_clusters") == 0
    assert await _get(stack, "/id", pin=workers[1]) == (200, "w1")
    # And the new stream carries changes again.
    worker = make_worker("http://127.0.0.9:9000", models=(MODEL,))
    stack.registry.upsert(worker)

    async def arrived() -> bool:
        return "127.0.0.9:9000" in await stack.cluster_hosts()

    await eventually(arrived, timeout_s=1.0, what="a change after the restart")
