"""Pod objects to workers: ports, models, roles, bootstrap ports, readiness."""

from __future__ import annotations

import pytest

from corral.config.settings import KubernetesDiscoveryConfig, KubernetesSelector
from corral.discovery.kubernetes_pods import (
    PodSkipped,
    read_pod,
    workers_for_pod,
)
from corral.pool import WorkerRole
from tests.integration.k8s_fake import make_pod

CONFIG = KubernetesDiscoveryConfig(selectors=[KubernetesSelector(label_selector="a=b")])
SELECTOR = CONFIG.selectors[0]


def workers(pod, selector=SELECTOR, config=CONFIG):
    return workers_for_pod(read_pod(pod), selector, config)


@pytest.mark.parametrize(
    ("phase", "ready", "expected"),
    [("Running", True, True), ("Running", False, False), ("Pending", True, False)],
    ids=["running-ready", "running-unready", "pending"],
)
def test_pod_is_ready_only_when_running_with_ready_condition(phase, ready, expected):
    assert read_pod(make_pod("p", phase=phase, ready=ready)).ready is expected


def test_terminating_and_finished_pods_are_recognised():
    pod = make_pod("p")
    pod["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert read_pod(pod).terminating
    assert read_pod(make_pod("p", phase="Succeeded")).finished
    assert not read_pod(make_pod("p")).terminating


def test_port_annotation_lists_give_one_worker_per_port():
    pod = make_pod("p", "10.1.2.3", namespace="ml",
                   annotations={"corral.io/port": "8000, 8001"})
    result = workers(pod)
    assert [w.id for w in result] == ["ml/p:8000", "ml/p:8001"]
    assert [w.url for w in result] == ["http://10.1.2.3:8000", "http://10.1.2.3:8001"]
    assert result[0].labels["corral.io/pod"] == "p"


def test_port_falls_back_to_selector_then_config():
    selector = KubernetesSelector(label_selector="a=b", port=9000)
    assert [w.port for w in workers(make_pod("p"), selector)] == [9000]
    assert [w.port for w in workers(make_pod("p"))] == [CONFIG.port]


@pytest.mark.parametrize(
    "value", ["", "http", "0", "70000", "8000,,8001", "8000,8000", "-1"]
)
def test_malformed_port_annotation_skips_the_pod(value):
    with pytest.raises(PodSkipped, match=r"corral\.io/port"):
        workers(make_pod("p", annotations={"corral.io/port": value}))


def test_missing_port_annotation_skips_the_pod_when_required():
    config = CONFIG.model_copy(update={"require_port_annotation": True})
    with pytest.raises(PodSkipped, match="missing"):
        workers(make_pod("p"), config=config)


def test_ipv6_pod_address_is_bracketed():
    (worker,) = workers(make_pod("p", "fd00::5"))
    assert worker.url == "http://[fd00::5]:8000"
    assert worker.address == "[fd00::5]:8000"


def test_model_comes_from_label_then_annotation_then_selector():
    selector = KubernetesSelector(label_selector="a=b", model="from-selector")
    both = make_pod("p", labels={"corral.io/model": "from-label"},
                    annotations={"corral.io/model": "org/from-annotation"})
    assert workers(both, selector)[0].models == ("from-label",)
    annotated = make_pod("p", annotations={"corral.io/model": "org/from-annotation"})
    assert workers(annotated, selector)[0].models == ("org/from-annotation",)
    assert workers(make_pod("p"), selector)[0].models == ("from-selector",)
    assert workers(make_pod("p"))[0].models == ()


@pytest.mark.parametrize(
    ("label", "selector_role", "expected"),
    [
        (None, "regular", WorkerRole.REGULAR),
        ("prefill", "regular", WorkerRole.PREFILL),
        ("Decode", "regular", WorkerRole.DECODE),
        ("decode", "prefill", WorkerRole.PREFILL),
        (None, "decode", WorkerRole.DECODE),
    ],
    ids=["none", "label-prefill", "label-decode", "selector-wins", "selector-only"],
)
def test_role_from_selector_or_role_label(label, selector_role, expected):
    labels = {"llm-d.ai/role": label} if label else {}
    selector = KubernetesSelector(label_selector="a=b", role=selector_role)
    assert workers(make_pod("p", labels=labels), selector)[0].role is expected


def test_unknown_role_label_skips_the_pod():
    with pytest.raises(PodSkipped, match=r"llm-d\.ai/role"):
        workers(make_pod("p", labels={"llm-d.ai/role": "encode"}))


def test_bootstrap_port_single_value_or_aligned_list():
    one = make_pod("p", annotations={"corral.io/port": "8000,8001",
                                     "sglang.ai/bootstrap-port": "8998"})
    assert [w.bootstrap_port for w in workers(one)] == [8998, 8998]
    aligned = make_pod("p", annotations={"corral.io/port": "8000,8001",
                                         "sglang.ai/bootstrap-port": "8998,8999"})
    assert [w.bootstrap_port for w in workers(aligned)] == [8998, 8999]
    assert workers(make_pod("p"))[0].bootstrap_port is None


def test_bootstrap_port_list_of_the_wrong_length_skips_the_pod():
    pod = make_pod("p", annotations={"corral.io/port": "8000",
                                     "sglang.ai/bootstrap-port": "8998,8999"})
    with pytest.raises(PodSkipped, match="bootstrap-port"):
        workers(pod)
