"""Backoff and API client configuration of the Kubernetes source."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.config.settings import KubernetesDiscoveryConfig, KubernetesSelector
from corral.discovery.kubernetes import Backoff, KubernetesDiscovery, build_api_client
from corral.errors import ConfigError
from corral.pool import WorkerRegistry

SELECTORS = [KubernetesSelector(label_selector="app=vllm")]


def test_backoff_grows_exponentially_within_jitter_and_is_capped():
    backoff = Backoff(initial_s=0.1, max_s=1.0)
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [min(1.0, 0.1 * 2**n) for n in range(8)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_backoff_jitter_spreads_delays():
    delays = {Backoff(initial_s=1.0, max_s=1.0).next_delay() for _ in range(20)}
    assert len(delays) > 1


async def test_explicit_api_server_needs_no_credentials(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = KubernetesDiscoveryConfig(api_server="http://127.0.0.1:6443/",
                                       selectors=SELECTORS)
    client = await build_api_client(config)
    try:
        assert client.configuration.host == "http://127.0.0.1:6443"
    finally:
        await client.close()


async def test_kubeconfig_file_gives_server_and_token(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:7443'}}]\n"
        "users: [{name: u, user: {token: abc123}}]\n"
        "contexts: [{name: test, context: {cluster: c, user: u}}]\n"
    )
    config = KubernetesDiscoveryConfig(kubeconfig=path, selectors=SELECTORS)
    client = await build_api_client(config)
    try:
        assert client.configuration.host == "http://127.0.0.1:7443"
        assert client.configuration.api_key["BearerToken"].endswith("abc123")
    finally:
        await client.close()


async def test_unreadable_kubeconfig_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = KubernetesDiscoveryConfig(kubeconfig=tmp_path / "absent",
                                       selectors=SELECTORS)
    with pytest.raises(ConfigError, match="kubernetes"):
        await build_api_client(config)


async def test_in_cluster_without_service_account_files_is_a_config_error(
    monkeypatch,
):
    if Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
        pytest.skip("running inside a pod: the service account files exist")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    config = KubernetesDiscoveryConfig(selectors=SELECTORS)
    with pytest.raises(ConfigError, match="kubernetes"):
        await build_api_client(config)


def test_a_source_without_selectors_is_refused():
    with pytest.raises(ConfigError, match="selector"):
        KubernetesDiscovery(KubernetesDiscoveryConfig(), WorkerRegistry())
