"""Child processes of the benchmark: measured from /proc, stopped by PID."""

from __future__ import annotations

import sys
import time

import pytest

from bench.procs import ManagedProcess, ResourceSampler, pick_port, wait_http_ok

# A parent that starts a child and both sleep: the tree the harness must see.
TREE = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
    "x = [0] * 3_000_000\n"
    "time.sleep(30)\n"
)


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met before the deadline")


def test_process_tree_is_measured_and_stopped_whole(tmp_path):
    process = ManagedProcess("tree", [sys.executable, "-c", TREE], log_dir=tmp_path)
    process.start()
    try:
        _wait_for(lambda: len(process.pids()) == 2)
        pids = process.pids()
        with ResourceSampler([process], interval_s=0.05) as sampler:
            time.sleep(0.2)
        # Two Python interpreters and a 24 MB list are well over 20 MB resident.
        assert sampler.peak_rss > 20 * 2**20
        assert sampler.cpu_s >= 0.0
    finally:
        process.stop(timeout_s=5)
    assert not process.alive()
    for pid in pids:
        _wait_for(lambda pid=pid: not _exists(pid))


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # A zombie (state Z) has exited and waits for its parent to reap it.
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_wait_http_ok_fails_fast_when_the_process_exits(tmp_path):
    process = ManagedProcess(
        "quitter", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"],
        log_dir=tmp_path,
    )
    process.start()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited while starting"):
        wait_http_ok(f"http://127.0.0.1:{pick_port()}/health", timeout_s=30,
                     process=process)
    assert time.monotonic() - started < 10
    process.stop()


def test_picked_ports_are_below_the_ephemeral_range_and_distinct():
    ports = {pick_port() for _ in range(20)}
    assert len(ports) == 20
    assert all(20000 <= p < 32768 for p in ports)
