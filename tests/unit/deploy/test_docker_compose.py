"""docker-compose.yml cannot run here (no Docker engine); check its structure."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml

from corral.config import load_config
from corral.xds.bootstrap import render_bootstrap

REPO = Path(__file__).resolve().parents[3]
COMPOSE = REPO / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_compose_has_the_whole_stack() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "envoy", "corral", "worker-1", "worker-2", "worker-3", "prometheus"
    }
    assert services["envoy"]["image"].startswith("envoyproxy/envoy:v1.40")
    assert services["corral"]["build"] == "."
    assert (REPO / "Dockerfile").is_file()
    assert services["prometheus"]["image"].startswith("prom/prometheus")


def test_published_ports_bind_loopback_only() -> None:
    for name, service in _compose()["services"].items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), (name, mapping)
    envoy_ports = _compose()["services"]["envoy"]["ports"]
    settings = load_config(REPO / "deploy/docker/corral.yaml")
    assert f"127.0.0.1:8080:{settings.envoy.listen.port}" in envoy_ports


def test_envoy_mounts_the_bootstrap_corral_generates() -> None:
    services = _compose()["services"]
    mount = next(v for v in services["envoy"]["volumes"] if "envoy.yaml" in v)
    host_path = REPO / mount.split(":")[0]
    mounted = yaml.safe_load(host_path.read_text())
    settings = load_config(REPO / "deploy/docker/corral.yaml")
    assert mounted == render_bootstrap(settings), (
        "deploy/docker/envoy.yaml is stale: regenerate it with "
        "corral envoy-config --config deploy/docker/corral.yaml "
        "-o deploy/docker/envoy.yaml"
    )


def test_services_find_each_other_at_the_addresses_the_config_names() -> None:
    compose = _compose()
    services = compose["services"]
    subnet = ipaddress.ip_network(
        compose["networks"]["corral"]["ipam"]["config"][0]["subnet"]
    )
    address = {
        name: service["networks"]["corral"]["ipv4_address"]
        for name, service in services.items()
    }
    for value in address.values():
        assert ipaddress.ip_address(value) in subnet
    settings = load_config(REPO / "deploy/docker/corral.yaml")
    assert settings.envoy.control_plane is not None
    assert settings.envoy.control_plane.host == address["corral"]
    worker_hosts = {w.url.split("//")[1].split(":")[0] for w in settings.workers}
    assert worker_hosts == {address[f"worker-{i}"] for i in (1, 2, 3)}
    mount = next(v for v in services["corral"]["volumes"] if "corral.yaml" in v)
    assert mount.split(":")[1] == "/etc/corral/corral.yaml"
