"""The Kubernetes manifests under deploy/kubernetes/ load and hang together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.config import parse_settings
from corral.config.settings import Settings

MANIFESTS = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


DOCS = _documents()


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _settings() -> Settings:
    return parse_settings(yaml.safe_load(_one("ConfigMap", "corral-config")["data"]
                                         ["config.yaml"]))


def test_every_manifest_has_the_expected_kinds():
    kinds = sorted({d["kind"] for d in DOCS})
    assert kinds == sorted({
        "Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
        "Deployment", "Service",
    })
    for doc in DOCS:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "corral"


def test_role_grants_exactly_get_list_watch_on_pods():
    role = _one("Role", "corral-pod-reader")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = _one("RoleBinding", "corral-pod-reader")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
        "name": "corral-pod-reader",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "corral", "namespace": "corral"}
    ]
    assert not [d for d in DOCS if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


@pytest.mark.parametrize("name", ["corral", "envoy", "vllm-llama"])
def test_deployment_selector_matches_its_pod_labels(name):
    deployment = _one("Deployment", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for key, value in deployment["spec"]["selector"]["matchLabels"].items():
        assert labels.get(key) == value


@pytest.mark.parametrize("name", ["corral", "envoy"])
def test_service_selects_its_deployment_pods_and_named_ports(name):
    service = _one("Service", name)
    pod = _one("Deployment", name)["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_corral_runs_serve_with_the_mounted_config_and_service_account():
    pod = _one("Deployment", "corral")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == _one("ServiceAccount", "corral")["metadata"][
        "name"]
    (container,) = pod["containers"]
    # The image's entrypoint is `corral`: the args start at the subcommand.
    assert container["args"] == [
        "serve", "--config", "/etc/corral/config.yaml"
    ]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/etc/corral"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "corral-config"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = _settings()
    assert ports == {"grpc": settings.grpc.port, "admin": settings.admin.port}
    assert settings.grpc.host == "0.0.0.0"


def test_envoy_uses_the_official_image_and_the_bootstrap_configmap():
    pod = _one("Deployment", "envoy")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("envoyproxy/envoy:v1.40")
    assert container["args"][:2] == ["-c", "/etc/envoy/envoy.yaml"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == "envoy-bootstrap"
    assert "envoy.yaml" in _one("ConfigMap", "envoy-bootstrap")["data"]
    assert container["ports"][0]["containerPort"] == _settings().envoy.listen.port


def test_configmap_config_validates_and_its_selector_matches_the_example_worker():
    from tests.integration.k8s_fake import parse_selector

    settings = _settings()
    k8s = settings.discovery.kubernetes
    assert k8s is not None and k8s.namespace == "corral"
    worker = _one("Deployment", "vllm-llama")["spec"]["template"]["metadata"]
    selectors = [parse_selector(s.label_selector) for s in k8s.selectors]
    assert any(matches(worker["labels"]) for matches in selectors)
    assert worker["annotations"][k8s.port_annotation] == "8000"
    assert settings.model(worker["annotations"][k8s.model_annotation]) is not None


def test_the_deployment_command_and_its_config_start_as_written():
    from corral.cli import build_parser
    from corral.commands._checks import check_settings
    from corral.xds.bootstrap import render_bootstrap

    container = _one("Deployment", "corral")["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"])  # after ENTRYPOINT corral
    assert args.command == "serve"
    settings = _settings()
    check_settings(settings)
    cluster = render_bootstrap(settings)["static_resources"]["clusters"][0]
    # Envoy reaches the control plane through the Service's DNS name.
    assert cluster["type"] == "STRICT_DNS"
