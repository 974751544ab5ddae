"""The simulator's cost model: prefix cache, eviction, queueing, freed slots."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.integration._sim_support import client, running, scrape, wait_for

LONG = list(range(1000, 1600))  # 600 token ids, 37 full blocks + a tail


async def _ttft(worker, prompt, **extra) -> float:
    start = time.monotonic()
    stream = await client(worker).completions.create(
        model="sim-model", prompt=prompt, max_tokens=2, stream=True, **extra
    )
    first = None
    async for _ in stream:
        first = first or time.monotonic()
    return first - start


async def test_repeated_long_prefix_is_faster_and_counts_hits():
    # Times are read from the worker's own TTFT histogram (arrival to first
    # token), which client-side overheads on a busy machine do not blur. At
    # this scale the cold prefill is (0.035 + 600 * 0.00016) * 0.5 = 65 ms and
    # the warm one 18 ms.
    async with running(time_scale=0.5) as worker:
        await _ttft(worker, LONG)
        before = await scrape(worker)
        await _ttft(worker, [*LONG[:-1], 7])
        after = await scrape(worker)
    cold = before["vllm:time_to_first_token_seconds_sum"]
    warm = after["vllm:time_to_first_token_seconds_sum"] - cold
    assert before["vllm:prefix_cache_hits_total"] == 0
    assert after["vllm:prefix_cache_hits_total"] == 37 * 16
    assert after["vllm:prefix_cache_queries_total"] == 1200
    assert warm < cold * 0.6, (cold, warm)


async def test_sglang_reports_cache_hit_rate():
    async with running(engine="sglang") as worker:
        await _ttft(worker, LONG)
        await _ttft(worker, LONG)
        samples = await scrape(worker)
    assert samples["sglang:cached_tokens_total"] == 37 * 16
    assert samples["sglang:cache_hit_rate"] == (37 * 16) / 1200


async def _second_round_hits(num_blocks: int) -> tuple[float, int]:
    # Three prompts of 65 tokens (four full blocks and a tail each), sent
    # twice in turn; the hits of the second round tell what stayed cached.
    prompts = [list(range(s, s + 65)) for s in (0, 1000, 2000)]
    async with running(num_blocks=num_blocks) as worker:
        api = client(worker)
        for prompt in prompts:
            await api.completions.create(model="sim-model", prompt=prompt, max_tokens=1)
        first = (await scrape(worker))["vllm:prefix_cache_hits_total"]
        for prompt in prompts:
            await api.completions.create(model="sim-model", prompt=prompt, max_tokens=1)
        second = (await scrape(worker))["vllm:prefix_cache_hits_total"]
        assert first == 0
        return second - first, worker.engine.kv.evictions


async def test_cache_smaller_than_working_set_evicts():
    roomy_hits, roomy_evictions = await _second_round_hits(1000)
    small_hits, small_evictions = await _second_round_hits(10)
    assert roomy_hits == 3 * 64 and roomy_evictions == 0
    assert small_evictions > 0
    assert small_hits < roomy_hits / 2


async def test_requests_beyond_max_num_seqs_wait_in_order():
    async with running(max_num_seqs=2) as worker:
        api = client(worker)
        starts: dict[int, float] = {}
        t0 = time.monotonic()

        async def one(i: int) -> None:
            stream = await api.completions.create(
                model="sim-model", prompt=f"request {i}", max_tokens=80, stream=True
            )
            async for _ in stream:
                starts.setdefault(i, time.monotonic() - t0)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(one(i)))

        async def queued() -> bool:
            s = await scrape(worker)
            return (
                s["vllm:num_requests_waiting"] == 3
                and s["vllm:num_requests_running"] == 2
            )

        await wait_for(queued)
        await asyncio.gather(*tasks)
        samples = await scrape(worker)
    ordered = sorted(starts.values())
    # 80 tokens of decode take 80 * ~11 ms * 0.05 = ~45 ms: the three queued
    # requests start only after a running one ends.
    assert ordered[2] - ordered[1] > 0.025, ordered
    assert samples["vllm:num_requests_waiting"] == 0
    assert samples["vllm:request_queue_time_seconds_sum"] > 0


async def test_kv_usage_rises_while_running():
    async with running(num_blocks=100, max_num_seqs=4) as worker:
        api = client(worker)
        task = asyncio.create_task(
            api.completions.create(
                model="sim-model",
                prompt=list(range(320)),
                max_tokens=200,
                extra_body={"ignore_eos": True},
            )
        )

        async def busy() -> bool:
            return (await scrape(worker))["vllm:kv_cache_usage_perc"] >= 0.21

        await wait_for(busy)
        await task
        assert (await scrape(worker))["vllm:kv_cache_usage_perc"] == 0


async def test_disconnected_client_frees_its_slot_at_once():
    async with running(max_num_seqs=1) as worker, aiohttp.ClientSession() as session:
        api = client(worker)
        body = {
            "model": "sim-model",
            "prompt": "long",
            "max_tokens": 5000,
            "ignore_eos": True,
            "stream": True,
        }
        resp = await session.post(f"{worker.url}/v1/completions", json=body)
        await resp.content.readline()  # it is running
        queued = asyncio.create_task(
            api.completions.create(model="sim-model", prompt="next", max_tokens=3)
        )

        async def one_waiting() -> bool:
            s = await scrape(worker)
            return (
                s["vllm:num_requests_waiting"] == 1
                and s["vllm:num_requests_running"] == 1
            )

        await wait_for(one_waiting)
        resp.close()  # the client goes away mid-answer
        reply = await asyncio.wait_for(queued, 5)
        assert reply.usage.completion_tokens == 3

        async def idle() -> bool:
            s = await scrape(worker)
            return (
                s["vllm:num_requests_running"] == 0
                and s["vllm:num_requests_waiting"] == 0
            )

        await wait_for(idle)
        assert worker.engine.decoding == 0


async def test_non_streamed_client_timeout_frees_its_slot():
    async with running(max_num_seqs=1) as worker:
        impatient = client(worker, timeout=0.3)
        try:
            await impatient.completions.create(
                model="sim-model",
                prompt="long",
                max_tokens=5000,
                extra_body={"ignore_eos": True},
            )
        except Exception as exc:
            assert (
                "timed out" in str(exc).lower()
                or "timeout" in type(exc).__name__.lower()
            )
        else:
            raise AssertionError("the request should not have finished")

        async def idle() -> bool:
            return (await scrape(worker))["vllm:num_requests_running"] == 0

        await wait_for(idle)
