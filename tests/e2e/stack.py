"""Start the local stack exactly as a user does, with ``corral up``, on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import free_port


def free_port_range(count: int) -> int:
    """First of ``count`` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        first = free_port()
        if first + count > 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                sockets.append(sock)
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return first
    raise RuntimeError("no free port range")


@dataclass
class Stack:
    process: subprocess.Popen[str]
    gateway: str
    admin: str
    envoy_admin: str
    sim_ports: list[int]
    config: dict[str, Any]
    output: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.gateway}/v1"

    def workers(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.admin}/workers", timeout=5).json()["workers"])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return int(self.process.returncode)


def start_stack(
    tmp_path: Path,
    *,
    policy: str = "cache_aware",
    params: dict[str, Any] | None = None,
    workers: int = 3,
    time_scale: float = 0.05,
    extra: dict[str, Any] | None = None,
    max_model_len: int = 131072,
) -> Stack:
    sim_first = free_port_range(workers)
    config: dict[str, Any] = {
        "grpc": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "envoy": {
            "listen": {"host": "127.0.0.1", "port": free_port()},
            "admin": {"host": "127.0.0.1", "port": free_port()},
        },
        "models": [
            {
                "name": "corral-demo",
                "tokenizer": "builtin",
                "policy": {"name": policy, "params": params or {}},
            }
        ],
        "health_check": {"interval_s": 0.5, "timeout_s": 1.0, "failure_threshold": 2},
        "load_metrics": {"interval_s": 0.5},
    }
    config.update(extra or {})
    path = tmp_path / "corral.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "corral", "up", "--config", str(path),
            "--workers", str(workers), "--sim-port", str(sim_first),
            "--sim-time-scale", str(time_scale),
            "--sim-max-model-len", str(max_model_len), "--log-dir", str(tmp_path / "logs"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    output: list[str] = []
    deadline = time.monotonic() + 90
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                logs = "".join(
                    p.read_text(errors="replace")[-3000:]
                    for p in sorted((tmp_path / "logs").glob("*.log"))
                )
                raise AssertionError(
                    "corral up exited:\n" + "".join(output) + "\n" + logs
                )
            continue
        output.append(line)
        if line.startswith("Press Ctrl-C"):
            break
    else:
        process.kill()
        raise AssertionError("corral up did not start:\n" + "".join(output))
    # Keep draining stdout so the child never blocks on a full pipe.
    import threading

    def drain() -> None:
        assert process.stdout is not None
        for rest in process.stdout:
            output.append(rest)

    threading.Thread(target=drain, daemon=True).start()
    first = output[0]
    assert first.startswith("Corral gateway:"), output
    gateway = first.split()[-1].removesuffix("/v1")
    return Stack(
        process=process,
        gateway=gateway,
        admin=f"http://127.0.0.1:{config['admin']['port']}",
        envoy_admin=f"http://127.0.0.1:{config['envoy']['admin']['port']}",
        sim_ports=list(range(sim_first, sim_first + workers)),
        config=config,
        output=output,
    )
