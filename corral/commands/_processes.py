"""Child processes of ``corral up``: started in order, stopped in reverse, by PID.

Each child runs in its own session (so a terminal's Ctrl-C reaches only
``corral up``, which then stops the children in a known order) and, on Linux,
asks the kernel to send it SIGTERM if ``corral up`` dies, so nothing is left
behind even after a SIGKILL.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


class Child:
    """One started process with a name for messages; ``restart()`` starts the
    same command again after it exited."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path | None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.restarts = 0
        self._log = open(log_path, "ab") if log_path else None  # noqa: SIM115
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log if self._log else None,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env=self.env,
        )
        logger.debug("started %s (pid %d): %s", self.name, process.pid, self.argv)
        return process

    def restart(self) -> None:
        if self.process.poll() is None:
            raise RuntimeError(f"{self.name} is still running")
        self.restarts += 1
        self.process = self._spawn()

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> int | None:
        return self.process.poll()

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; always reaps the process."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (pid %d) ignored SIGTERM; killing", self.name, self.pid
                )
                self.process.kill()
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass
        if self._log:
            self._log.close()
            self._log = None


def wait_http_ok(url: str, *, timeout_s: float, child: Child | None = None) -> None:
    """Poll ``url`` until it answers 2xx; raise RuntimeError on timeout or exit."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if child is not None and child.exited() is not None:
            raise RuntimeError(f"{child.name} exited with status {child.exited()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if 200 <= response.status < 300:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s ({last})")


def corral_argv(*args: str) -> list[str]:
    """Run a corral subcommand with this interpreter, wherever it is installed."""
    return [sys.executable, "-m", "corral", *args]
