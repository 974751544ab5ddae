"""Kubernetes discovery through the real kubernetes_asyncio client, against a fake
API server on 127.0.0.1 that speaks the list and watch protocol."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from corral.config.settings import KubernetesDiscoveryConfig, KubernetesSelector
from corral.discovery.kubernetes import KubernetesDiscovery
from corral.observability import metrics
from corral.pool import WorkerRegistry, WorkerRole, WorkerState
from tests.integration.k8s_fake import FakeKubeAPI, make_pod, set_ready

pytestmark = pytest.mark.timeout(30)

VLLM = {"app": "vllm", "corral.io/model": "llama"}
APP = "app=vllm"


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeAPI]:
    server = FakeKubeAPI(bookmark_interval_s=0.1)
    await server.start()
    yield server
    await server.stop()


Start = Callable[..., Awaitable[tuple[KubernetesDiscovery, WorkerRegistry]]]


@pytest.fixture
async def start(api: FakeKubeAPI) -> AsyncIterator[Start]:
    tasks: list[asyncio.Task[None]] = []

    async def start_discovery(
        *selectors: KubernetesSelector, **options: Any
    ) -> tuple[KubernetesDiscovery, WorkerRegistry]:
        options.setdefault("namespace", "default")
        config = KubernetesDiscoveryConfig(
            api_server=api.url,
            selectors=list(selectors) or [KubernetesSelector(label_selector=APP)],
            **options,
        )
        registry = WorkerRegistry()
        discovery = KubernetesDiscovery(
            config, registry, drain_timeout_s=2.0, watch_timeout_s=5.0,
            backoff_initial_s=0.02, backoff_max_s=0.1,
        )
        tasks.append(asyncio.create_task(discovery.run()))
        await asyncio.wait_for(discovery.wait_synced(), 5)
        return discovery, registry

    yield start_discovery
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def restarts(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "corral_kubernetes_watch_restarts_total", {"reason": reason}
    )
    return value or 0.0


def states(registry: WorkerRegistry) -> dict[str, WorkerState]:
    return {i: w.state for i, w in registry.snapshot().workers.items()}


async def test_listed_pods_become_ready_workers_with_model_and_id(api, start):
    api.add(make_pod("vllm-0", "10.0.0.1", labels=VLLM))
    api.add(make_pod("other", "10.0.0.9", labels={"app": "web"}))
    _, registry = await start()
    worker = registry.get("default/vllm-0:8000")
    assert worker is not None
    assert worker.url == "http://10.0.0.1:8000"
    assert worker.models == ("llama",)
    assert worker.state is WorkerState.READY
    assert worker.source == "kubernetes"
    assert list(registry.snapshot().workers) == ["default/vllm-0:8000"]


async def test_scale_up_then_down_follows_the_pods(api, start):
    _, registry = await start()
    assert registry.snapshot().workers == {}
    for n in range(3):
        api.add(make_pod(f"vllm-{n}", f"10.0.0.{n + 1}", labels=VLLM))
    await wait_for(lambda: len(registry.ready_workers("llama")) == 3)
    api.delete("default", "vllm-2")
    api.delete("default", "vllm-1")
    await wait_for(lambda: list(registry.snapshot().workers) == ["default/vllm-0:8000"])


async def test_pod_going_unready_and_ready_moves_the_worker_state(api, start):
    api.add(make_pod("vllm-0", "10.0.0.1", labels=VLLM))
    _, registry = await start()
    api.update("default", "vllm-0", lambda pod: set_ready(pod, False))
    await wait_for(lambda: states(registry) == {"default/vllm-0:8000": "not_ready"})
    api.update("default", "vllm-0", lambda pod: set_ready(pod, True))
    await wait_for(lambda: states(registry) == {"default/vllm-0:8000": "ready"})


async def test_pod_without_ip_waits_and_joins_not_ready_until_ready(api, start):
    api.add(make_pod("vllm-0", None, labels=VLLM, ready=False, phase="Pending"))
    _, registry = await start()
    assert registry.snapshot().workers == {}

    def scheduled(pod: dict[str, Any]) -> None:
        pod["status"].update(phase="Running", podIP="10.0.0.5")

    api.update("default", "vllm-0", scheduled)
    await wait_for(lambda: states(registry) == {"default/vllm-0:8000": "not_ready"})
    api.update("default", "vllm-0", lambda pod: set_ready(pod, True))
    await wait_for(lambda: states(registry) == {"default/vllm-0:8000": "ready"})


async def test_terminating_pod_drains_until_in_flight_requests_finish(api, start):
    api.add(make_pod("vllm-0", "10.0.0.1", labels=VLLM))
    api.add(make_pod("vllm-1", "10.0.0.2", labels=VLLM))
    _, registry = await start()
    registry.load("default/vllm-0:8000").begin(10)
    api.terminate("default", "vllm-0")
    await wait_for(lambda: states(registry)["default/vllm-0:8000"] == "draining")
    api.delete("default", "vllm-0")
    await asyncio.sleep(0.2)  # the drain must hold while a request is in flight
    assert states(registry)["default/vllm-0:8000"] == "draining"
    registry.load("default/vllm-0:8000").end(10)
    await wait_for(lambda: "default/vllm-0:8000" not in registry.snapshot().workers)
    assert states(registry) == {"default/vllm-1:8000": "ready"}


async def test_relabelled_pod_leaves_and_a_new_pod_with_the_same_name_returns(
    api, start
):
    api.add(make_pod("vllm-0", "10.0.0.1", labels=VLLM))
    _, registry = await start()
    api.update("default", "vllm-0", lambda pod: pod["metadata"]["labels"].update(
        app="retired"))
    await wait_for(lambda: registry.snapshot().workers == {})
    api.delete("default", "vllm-0")
    api.add(make_pod("vllm-0", "10.0.0.7", labels=VLLM))
    await wait_for(lambda: states(registry) == {"default/vllm-0:8000": "ready"})
    assert registry.get("default/vllm-0:8000").host == "10.0.0.7"


async def test_dropped_watch_resumes_from_last_version_without_listing(api, start):
    api.add(make_pod("vllm-0", "10.0.0.1", labels=VLLM))
    _, registry = await start()
    await wait_for(lambda: api.watch_count == 1)
    api.drop_watches()
    api.add(make_pod("vllm-1", "10.0.0.2", labels=VLLM))
    await wait_for(lambda: len(registry.ready_workers("llama")) == 2)
    assert len(api.calls(watch=False)) == 1
    watches = api.calls(watch=True)
    assert len(watches) >= 2
    assert all(w["resourceVersion"] != "" for w in watches)
    assert all(w["allowWatchBookmarks"] in ("True", "true") for w in watches)


async def test_bookmarks_move_the_resume_version_forward(api, start):
    discovery, _ = await start()
    await wait_for(lambda: api.watch_count == 1)
    first = int(api.calls(watch=True)[0]["resourceVersion"])
    api.add(make_pod("elsewhere", "10.0.0.3", labels={"app": "web"}))
    target = api.resource_version
    # The pod is not selected, so only a bookmark can carry its version.
    await wait_for(lambda: discovery.resource_versions == (str(target),))
    assert api.last_bookmark == target
    api.drop_watches()
    await wait_for(lambda: len(api.calls(watch=True)) >= 2)
    assert first < target
    assert int(api.calls(watch=True)[-1]["resourceVersion"]) == target


async def test_expired_version_relists_and_reconciles(api, start):
    api.add(make_pod("vllm-0", "10.0.0.1", labels=VLLM))
    api.add(make_pod("vllm-1", "10.0.0.2", labels=VLLM))
    _, registry = await start()
    expired_before = restarts("expired")
    await api.stop()
    api.delete("default", "vllm-0")
    api.add(make_pod("vllm-2", "10.0.0.3", labels=VLLM))
    api.compact()
    await api.start()
    await wait_for(lambda: sorted(registry.snapshot().workers)
                   == ["default/vllm-1:8000", "default/vllm-2:8000"])
    assert len(api.calls(watch=False)) == 2
    assert restarts("expired") == expired_before + 1


async def test_api_server_away_keeps_membership_then_converges(api, start, caplog):
    caplog.set_level(logging.WARNING, logger="corral.discovery.kubernetes")
    api.add(make_pod("vllm-0", "10.0.0.1", labels=VLLM))
    api.add(make_pod("vllm-1", "10.0.0.2", labels=VLLM))
    _, registry = await start()
    before = registry.snapshot()
    await api.stop()
    await wait_for(lambda: sum("membership kept" in r.message
                               for r in caplog.records) >= 3)
    assert registry.snapshot() is before
    api.delete("default", "vllm-1")
    api.update("default", "vllm-0", lambda pod: set_ready(pod, False))
    await api.start()
    await wait_for(lambda: states(registry) == {"default/vllm-0:8000": "not_ready"})


async def test_pods_with_missing_or_bad_port_annotation_are_skipped(
    api, start, caplog
):
    caplog.set_level(logging.WARNING, logger="corral.discovery.kubernetes")
    api.add(make_pod("good", "10.0.0.1", labels=VLLM,
                     annotations={"corral.io/port": "8000,8001"}))
    api.add(make_pod("missing", "10.0.0.2", labels=VLLM))
    api.add(make_pod("bad", "10.0.0.3", labels=VLLM,
                     annotations={"corral.io/port": "http"}))
    _, registry = await start(require_port_annotation=True)
    assert sorted(registry.snapshot().workers) == [
        "default/good:8000", "default/good:8001"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("default/missing" in w and "missing" in w for w in warnings)
    assert any("default/bad" in w and "'http'" in w for w in warnings)
    # Fixing the annotation brings the pod in.
    api.update("default", "bad", lambda pod: pod["metadata"]["annotations"].update(
        {"corral.io/port": "9000"}))
    await wait_for(lambda: "default/bad:9000" in registry.snapshot().workers)


async def test_several_selectors_feed_several_pools_across_namespaces(api, start):
    api.add(make_pod("a-0", "10.0.1.1", namespace="team-a", labels={"pool": "a"}))
    api.add(make_pod("b-0", "10.0.2.1", namespace="team-b", labels={"pool": "b"}))
    api.add(make_pod("c-0", "10.0.3.1", namespace="team-b", labels={"pool": "c"}))
    _, registry = await start(
        KubernetesSelector(label_selector="pool=a", model="model-a", port=8100),
        KubernetesSelector(label_selector="pool in (b)", model="model-b"),
        namespace=None,
    )
    snapshot = registry.snapshot()
    assert [w.id for w in snapshot.ready("model-a")] == ["team-a/a-0:8100"]
    assert [w.id for w in snapshot.ready("model-b")] == ["team-b/b-0:8000"]
    assert len(snapshot.workers) == 2
    assert {p for p, _ in api.requests} == {"/api/v1/pods"}


async def test_role_labels_and_role_selectors_set_worker_roles(api, start):
    api.add(make_pod("p-0", "10.0.0.1", labels={**VLLM, "llm-d.ai/role": "prefill"},
                     annotations={"sglang.ai/bootstrap-port": "8998"}))
    api.add(make_pod("d-0", "10.0.0.2", labels={**VLLM, "llm-d.ai/role": "decode"}))
    api.add(make_pod("x-0", "10.0.0.3", labels={"app": "sglang-prefill"}))
    _, registry = await start(
        KubernetesSelector(label_selector="app=vllm"),
        KubernetesSelector(label_selector="app=sglang-prefill", role="prefill",
                           model="llama"),
    )
    workers = registry.snapshot().workers
    assert workers["default/p-0:8000"].role is WorkerRole.PREFILL
    assert workers["default/p-0:8000"].bootstrap_port == 8998
    assert workers["default/d-0:8000"].role is WorkerRole.DECODE
    assert workers["default/x-0:8000"].role is WorkerRole.PREFILL
    assert workers["default/x-0:8000"].models == ("llama",)


async def test_membership_changes_notify_registry_listeners_per_event(api, start):
    _, registry = await start()
    seen: list[int] = []
    registry.subscribe(lambda snap: seen.append(len(snap.workers)))
    api.add(make_pod("vllm-0", "10.0.0.1", labels=VLLM))
    await wait_for(lambda: seen == [1])
