"""Fault injection: each mode does what it says, set at start or at run time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import aiohttp
import openai
import pytest

from corral.simulator import FaultConfig
from tests.conftest import free_port
from tests.integration._sim_support import client, running, scrape, wait_for


async def _post(session, url, body):
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def test_error_rate_answers_with_the_chosen_status():
    async with running(faults=FaultConfig(error_rate=1.0, error_status=429)) as worker:
        with pytest.raises(openai.RateLimitError):
            await client(worker).completions.create(
                model="sim-model", prompt="x", max_tokens=1
            )


async def test_error_rate_applies_to_a_share_of_requests():
    async with (
        running(faults=FaultConfig(error_rate=0.5)) as worker,
        aiohttp.ClientSession() as session,
    ):
        statuses = []
        for _ in range(40):
            async with session.post(
                f"{worker.url}/v1/completions", json={"prompt": "x", "max_tokens": 1}
            ) as resp:
                statuses.append(resp.status)
    assert set(statuses) == {200, 503}
    assert 8 <= statuses.count(503) <= 32


async def test_fail_after_n_requests_changed_at_run_time():
    async with running() as worker, aiohttp.ClientSession() as session:
        status, faults = await _post(
            session, f"{worker.url}/sim/faults", {"fail_after": 2, "error_status": 500}
        )
        assert status == 200 and faults["fail_after"] == 2
        async with session.get(f"{worker.url}/sim/faults") as resp:
            assert (await resp.json())["error_status"] == 500
        api = client(worker)
        for _ in range(2):
            await api.completions.create(model="sim-model", prompt="x", max_tokens=1)
        with pytest.raises(openai.InternalServerError):
            await api.completions.create(model="sim-model", prompt="x", max_tokens=1)
        status, _ = await _post(
            session, f"{worker.url}/sim/faults", {"fail_after": None}
        )
        assert status == 200
        await api.completions.create(model="sim-model", prompt="x", max_tokens=1)


async def test_bad_fault_settings_are_refused():
    async with running() as worker, aiohttp.ClientSession() as session:
        status, body = await _post(
            session, f"{worker.url}/sim/faults", {"error_rate": 3}
        )
        assert status == 400 and body["error"]["param"] == "error_rate"


async def test_hang_accepts_and_never_answers():
    async with running(faults=FaultConfig(hang=True)) as worker:
        with pytest.raises(openai.APITimeoutError):
            await client(worker, timeout=0.3).completions.create(
                model="sim-model", prompt="x", max_tokens=1
            )
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{worker.url}/health") as resp,
        ):
            assert resp.status == 200  # only generation hangs


async def test_slow_start_keeps_health_at_503():
    async with (
        running(faults=FaultConfig(slow_start_s=0.4)) as worker,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{worker.url}/health") as resp:
            assert resp.status == 503

        async def healthy() -> bool:
            async with session.get(f"{worker.url}/health") as resp:
                return resp.status == 200

        await wait_for(healthy, timeout=3)


async def test_connection_dropped_mid_stream_after_k_chunks():
    async with running(faults=FaultConfig(drop_after_chunks=3)) as worker:
        stream = await client(worker).completions.create(
            model="sim-model", prompt="x", max_tokens=20, stream=True
        )
        received = 0
        with pytest.raises(openai.APIError):
            async for _ in stream:
                received += 1
        assert received == 3

        async def idle() -> bool:
            return (await scrape(worker))["vllm:num_requests_running"] == 0

        await wait_for(idle)


async def test_reset_cache_drops_cached_prefixes():
    async with running() as worker, aiohttp.ClientSession() as session:
        prompt = list(range(100))
        api = client(worker)
        await api.completions.create(model="sim-model", prompt=prompt, max_tokens=1)
        status, body = await _post(session, f"{worker.url}/sim/reset-cache", {})
        assert status == 200 and body["dropped_blocks"] == 6
        await api.completions.create(model="sim-model", prompt=prompt, max_tokens=1)
        assert (await scrape(worker))["vllm:prefix_cache_hits_total"] == 0


def _start_cli(*args: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral",
            "sim",
            "--port",
            str(port),
            "--time-scale",
            "0.05",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc, port


def _ready_lines(proc: subprocess.Popen[str], count: int) -> list[str]:
    lines = []
    deadline = time.monotonic() + 30
    while len(lines) < count:
        assert time.monotonic() < deadline, "the simulator did not get ready"
        line = proc.stdout.readline()
        assert line, f"simulator exited: {proc.stderr.read()}"
        lines.append(line.strip())
    return lines


async def test_exit_fault_ends_the_process():
    proc, port = _start_cli("--model", "m", "--exit-after", "2")
    try:
        (line,) = await asyncio.to_thread(_ready_lines, proc, 1)
        assert line == (
            f"corral sim: worker 127.0.0.1:{port} serving m (vllm) on "
            f"http://127.0.0.1:{port}"
        )
        api = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0
        )
        async with api:
            await api.completions.create(model="m", prompt="x", max_tokens=1)
            with pytest.raises(openai.APIConnectionError):
                await api.completions.create(model="m", prompt="x", max_tokens=1)
        assert await asyncio.to_thread(proc.wait, 10) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


async def test_many_workers_on_consecutive_ports_answer_with_their_ids():
    proc, port = _start_cli("--workers", "3", "--engine", "sglang")
    try:
        lines = await asyncio.to_thread(_ready_lines, proc, 3)
        assert [line.split()[3] for line in lines] == [
            f"127.0.0.1:{port + i}" for i in range(3)
        ]
        async with aiohttp.ClientSession() as session:
            for i in range(3):
                url = f"http://127.0.0.1:{port + i}/v1/chat/completions"
                body = {
                    "model": "sim-model",
                    "max_tokens": 1,
                    "messages": [{"role": "user", "content": "x"}],
                }
                async with session.post(url, json=body) as resp:
                    assert resp.status == 200
                    assert (
                        resp.headers["x-corral-sim-worker"] == f"127.0.0.1:{port + i}"
                    )
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
