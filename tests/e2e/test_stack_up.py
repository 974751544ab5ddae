"""The local stack as ``corral up`` runs it, used through the official openai client."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import free_port
from tests.e2e.stack import Stack, start_stack

pytestmark = pytest.mark.e2e

MODEL = "corral-demo"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield running
    finally:
        running.stop()


def _client(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url, api_key="unused", max_retries=0)


async def test_chat_completion_not_streamed_names_the_worker(stack: Stack) -> None:
    async with _client(stack) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello to the corral."}],
            max_tokens=8,
        )
        completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    worker = raw.headers.get("x-corral-worker")
    assert worker in {f"127.0.0.1:{port}" for port in stack.sim_ports}
    assert raw.headers.get("x-request-id")


async def test_chat_completion_streamed_with_usage(stack: Stack) -> None:
    async with _client(stack) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count to five."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
            elif chunk.usage is not None:
                usage = chunk.usage
    assert "".join(text)
    assert usage is not None and usage.completion_tokens == 12


async def test_completions_streamed_and_not(stack: Stack) -> None:
    async with _client(stack) as client:
        plain = await client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=6
        )
        assert plain.choices[0].text and plain.usage is not None
        stream = await client.completions.create(
            model=MODEL, prompt=["first prompt", "second prompt"], max_tokens=4,
            stream=True, stream_options={"include_usage": True},
        )
        indices, usage = set(), None
        async for chunk in stream:
            for choice in chunk.choices:
                indices.add(choice.index)
            if chunk.usage is not None:
                usage = chunk.usage
    assert indices == {0, 1}
    assert usage is not None and usage.completion_tokens == 8


async def test_unknown_model_is_404_in_openai_format(stack: Stack) -> None:
    async with _client(stack) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


async def test_models_endpoint_lists_the_pool(stack: Stack) -> None:
    async with _client(stack) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]


async def test_growing_conversation_stays_on_one_worker(stack: Stack) -> None:
    messages = [
        {"role": "system", "content": "You are a patient guide to cattle ranching. " * 20}
    ]
    served = []
    async with _client(stack) as client:
        for turn in range(6):
            messages.append({"role": "user", "content": f"Question {turn}: what next?"})
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, max_tokens=6
            )
            served.append(raw.headers["x-corral-worker"])
            messages.append(
                {"role": "assistant", "content": raw.parse().choices[0].message.content}
            )
    assert len(set(served)) == 1, served


async def test_fifty_concurrent_streams_spread_over_three_workers(stack: Stack) -> None:
    async def one(client: openai.AsyncOpenAI, index: int) -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Topic {index}: " + "words " * 40}],
            max_tokens=16,
            stream=True,
        )
        async for _ in raw.parse():
            pass
        return str(raw.headers["x-corral-worker"])

    async with _client(stack) as client:
        served = await asyncio.gather(*(one(client, i) for i in range(50)))
    counts = collections.Counter(served)
    # Distinct prefixes are cache misses: cache_aware sends them to the least
    # loaded worker, so all three take a real share.
    assert set(counts) == {f"127.0.0.1:{p}" for p in stack.sim_ports}, counts
    assert max(counts.values()) <= 30, counts


async def test_worker_added_and_removed_under_traffic_without_failures(
    stack: Stack, tmp_path: Path
) -> None:
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "corral", "sim", "--port", str(port), "--model", MODEL,
         "--time-scale", "0.05"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    failures: list[BaseException] = []
    served: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()

    async def traffic(client: openai.AsyncOpenAI, lane: int) -> None:
        index = 0
        deadline = time.monotonic() + 40
        while not stop.is_set() and time.monotonic() < deadline:
            index += 1
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"lane {lane} req {index}"}],
                    max_tokens=4,
                )
                served[raw.headers["x-corral-worker"]] += 1
            except Exception as exc:  # every failure is a finding
                failures.append(exc)

    try:
        async with _client(stack) as client, httpx.AsyncClient() as admin:
            lanes = [asyncio.create_task(traffic(client, i)) for i in range(4)]
            await asyncio.sleep(1.0)
            added = await admin.post(
                f"{stack.admin}/workers",
                json={"url": f"http://127.0.0.1:{port}", "model": MODEL},
            )
            assert added.status_code in (200, 202), added.text
            new_id = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 15
            while served[new_id] == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert served[new_id] > 0, "the added worker never took traffic"
            gone = f"127.0.0.1:{stack.sim_ports[0]}"
            removed = await admin.delete(f"{stack.admin}/workers/{gone}")
            assert removed.status_code in (200, 202), removed.text
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                ids = {w["id"] for w in stack.workers()}
                if gone not in ids:
                    break
                await asyncio.sleep(0.2)
            assert gone not in {w["id"] for w in stack.workers()}
            before = served[gone]
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*lanes)
        assert not failures, failures[:3]
        assert served[gone] == before, "the removed worker still took new requests"
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)


def test_clean_shutdown_stops_every_process(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, workers=2)
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(stack.process.pid)],
        capture_output=True, text=True, check=False,
    ).stdout.split()
    assert len(children) >= 3, children  # simulators, control plane, Envoy
    assert stack.stop() == 0
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(int(pid)), pid
    with pytest.raises(httpx.TransportError):
        httpx.get(stack.gateway + "/v1/models", timeout=2)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _children(stack: Stack) -> dict[str, list[str]]:
    """Command line of each child of corral up, keyed by what it runs."""
    found: dict[str, list[str]] = {}
    listing = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(stack.process.pid)],
        capture_output=True, text=True, check=False,
    ).stdout
    for pid in listing.split():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode() for a in raw.split(b"\0") if a]
        argv.insert(0, pid)
        if "serve" in argv:
            found["serve"] = argv
        elif "sim" in argv:
            found[f"sim:{argv[argv.index('--port') + 1]}"] = argv
        elif any("envoy" in a for a in argv):
            found["envoy"] = argv
    return found


def test_a_dead_worker_or_control_plane_does_not_take_the_stack_down(
    tmp_path: Path,
) -> None:
    stack = start_stack(tmp_path, workers=2)
    try:
        pids = {name: int(argv[0]) for name, argv in _children(stack).items()}
        os.kill(pids[f"sim:{stack.sim_ports[0]}"], signal.SIGKILL)
        os.kill(pids["serve"], signal.SIGKILL)
        survivor = f"127.0.0.1:{stack.sim_ports[1]}"
        served: list[str] = []
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=stack.gateway, timeout=30) as http:
            while time.monotonic() < deadline and len(served) < 10:
                response = http.post("/v1/completions", json={
                    "model": MODEL, "prompt": f"still up {len(served)}",
                    "max_tokens": 1})
                assert response.status_code == 200, response.text
                served.append(response.headers.get("x-corral-worker", "fail-open"))
        assert len(served) == 10
        # The control plane came back (a new pid) and routes again.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            restarted = _children(stack).get("serve")
            if restarted and int(restarted[0]) != pids["serve"]:
                try:
                    workers = stack.workers()
                except httpx.HTTPError:
                    workers = []
                states = {w["id"]: w["state"] for w in workers}
                if states.get(survivor) == "ready":
                    break
            time.sleep(0.3)
        else:
            raise AssertionError(f"control plane did not come back: {stack.output}")
        assert stack.process.poll() is None
    finally:
        assert stack.stop() == 0


def test_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        run = subprocess.run(
            [sys.executable, "-m", "corral", "up", "--workers", "1",
             "--sim-port", str(port), "--port", str(free_port()),
             "--log-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )
    finally:
        taken.close()
    assert run.returncode == 1
    assert f"simulated worker 127.0.0.1:{port}" in run.stderr
    assert "Corral gateway" not in run.stdout


def test_admin_token_is_never_written_to_disk(tmp_path: Path) -> None:
    secret = "s3cret-token-for-test"
    stack = start_stack(tmp_path, workers=1, extra={"admin_token": secret})
    try:
        assert httpx.get(f"{stack.admin}/workers", timeout=5).status_code == 401
        authorized = httpx.get(
            f"{stack.admin}/workers", timeout=5,
            headers={"authorization": f"Bearer {secret}"},
        )
        assert authorized.status_code == 200
        serve = _children(stack)["serve"]
        config = Path(serve[serve.index("--config") + 1])
        assert config.is_file()
        assert secret not in config.read_text()
    finally:
        stack.stop()
