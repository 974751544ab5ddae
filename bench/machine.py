"""A description of the machine a benchmark ran on, for the report's header."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _version_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[-1] if text else "unknown"


def _envoy_version(envoy: Path) -> str:
    # "<path>  version: <sha>/<version>/Clean/RELEASE/BoringSSL"
    line = _version_line([str(envoy), "--version"])
    return line.split("version:", 1)[-1].strip()


def describe(envoy: Path | None, smg: str | None) -> dict[str, Any]:
    """Cores, memory, CPU model, OS, Python, Envoy and SMG versions."""
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu_model": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "envoy": _envoy_version(envoy) if envoy else "missing",
        "smg": _version_line([smg, "--version"]) if smg else "missing",
        "corral": pkg("corral"),
        "aiohttp": pkg("aiohttp"),
    }
