"""The plain round-robin Envoy bootstrap of the benchmark, checked by Envoy itself."""

from __future__ import annotations

import json
import subprocess

from bench.contenders import envoy_binary
from bench.envoy_static import render_round_robin_bootstrap


def test_envoy_accepts_the_round_robin_bootstrap(tmp_path):
    bootstrap = render_round_robin_bootstrap(
        listen_port=20001, admin_port=20002,
        worker_urls=["http://127.0.0.1:20003", "http://127.0.0.1:20004"],
    )
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    # --mode validate parses and checks the configuration without binding ports
    # (https://www.envoyproxy.io/docs/envoy/latest/operations/cli#cmdoption-mode).
    done = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path),
         "--disable-hot-restart"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_bootstrap_lists_every_worker_and_binds_loopback_only():
    bootstrap = render_round_robin_bootstrap(
        listen_port=1, admin_port=2,
        worker_urls=["http://127.0.0.1:7001", "http://127.0.0.1:7002"],
    )
    cluster = bootstrap["static_resources"]["clusters"][0]
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
             for e in endpoints]
    assert ports == [7001, 7002]
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["address"] == "127.0.0.1"
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
