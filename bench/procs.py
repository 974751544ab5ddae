"""Child processes of a benchmark run: start, wait ready, measure, stop by PID.

Every process the harness starts goes through ``ManagedProcess``. It records the
PID it was given and, when stopping, signals that PID and then any descendants it
spawned (found by walking ``/proc``), never anything matched by name. CPU time
and resident memory are read from ``/proc/<pid>/stat`` and ``/proc/<pid>/status``
for the whole process tree, so a wrapper that forks its real server (as a Python
launcher may) is measured together with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

# smg 1.13.0 fails to bind free ports inside the Linux ephemeral range
# (32768-60999) with "Address already in use"; every port the harness hands
# out therefore comes from below it.
_PORT_RANGE = (20000, 32000)
_taken: set[int] = set()


def pick_port(rng: random.Random | None = None) -> int:
    """A TCP port below 32768 on 127.0.0.1 that is free now and not yet handed out."""
    rng = rng or random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(*_PORT_RANGE)
        if port in _taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError("no free TCP port found below 32768")


def pick_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports below 32768."""
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - count)
        ports = range(base, base + count)
        if any(p in _taken for p in ports):
            continue
        if all(_bindable(p) for p in ports):
            _taken.update(ports)
            return base
    raise RuntimeError(f"no block of {count} free TCP ports found below 32768")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; fields after
        # the closing parenthesis are fixed (proc(5)).
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it."""
    children = _children_map()
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        if not Path(f"/proc/{current}").exists():
            continue
        tree.append(current)
        stack.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU seconds used so far by ``pids`` (live ones)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # utime, stime are fields 14 and 15 of proc(5); index 11 and 12 here.
        total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of resident set sizes of ``pids`` (live ones)."""
    total = 0
    for pid in pids:
        try:
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        total += int(statm[1]) * _PAGE
    return total


class ManagedProcess:
    """One child process, its output in a log file, stopped by its own PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._env = env
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        env = dict(os.environ)
        env.update(self._env or {})
        logger.info("starting %s: %s", self.name, " ".join(self.argv))
        self._popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self._cwd,
        )
        log.close()

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def pids(self) -> list[int]:
        return [] if self.pid is None else process_tree(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process, then its leftover descendants; SIGKILL on timeout."""
        if self._popen is None:
            return
        tree = self.pids()
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM; killing pid %d",
                               self.name, self.pid)
                self._popen.kill()
                self._popen.wait(timeout=5)
        # Descendants that outlived their parent were started by us too (through
        # it); each is signalled by the PID recorded before the parent exited.
        for pid in tree[1:]:
            _terminate(pid, timeout_s=3.0)


def _terminate(pid: int, *, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def wait_http_ok(
    url: str,
    *,
    timeout_s: float,
    process: ManagedProcess | None = None,
    accept: Sequence[int] = (200,),
) -> None:
    """Poll ``url`` until it answers one of ``accept``; raise on deadline or exit."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(
                f"{process.name} exited while starting:\n{process.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in accept:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            if exc.code in accept:
                return
            last = f"status {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    tail = process.log_tail() if process is not None else ""
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s ({last})\n{tail}")


class ResourceSampler:
    """Samples CPU seconds and peak RSS of a set of processes during a run."""

    def __init__(self, processes: Sequence[ManagedProcess], interval_s: float = 0.25):
        self._processes = list(processes)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_start = 0.0
        self._last_cpu = 0.0
        self.peak_rss = 0
        self.cpu_s = 0.0

    def _pids(self) -> list[int]:
        return [pid for proc in self._processes for pid in proc.pids()]

    def _sample(self) -> None:
        pids = self._pids()
        self.peak_rss = max(self.peak_rss, rss_bytes(pids))
        self._last_cpu = cpu_seconds(pids)

    def __enter__(self) -> ResourceSampler:
        self._cpu_start = cpu_seconds(self._pids())
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()
        self.cpu_s = max(0.0, self._last_cpu - self._cpu_start)
