"""Check the simulator's default cost model against its target profile.

Starts one simulated worker in-process on 127.0.0.1 with default parameters
(time scale 1) and prints medians of: time to first token for a 256-token
prompt, cold (nothing cached) and warm (the same prompt again), and the
inter-token latency with 1 and with 32 requests decoding together. Targets
(7-8B model on one H100): TTFT 60-120 ms cold, clearly less warm; ITL 10-15 ms
at small batch. Runs about 15 seconds; sends a bounded number of requests.

    python bench/sim_calibration.py
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import aiohttp

from corral.simulator import SimConfig, SimWorker

PROMPT_TOKENS = 256
ROUNDS = 7
DECODE_TOKENS = 64


async def _stream(
    session: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int
) -> list[float]:
    """Arrival times of each token chunk, relative to the request's start."""
    body = {
        "model": "sim-model",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    start = time.perf_counter()
    times = []
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {"):
                times.append(time.perf_counter() - start)
    return times


def _itl(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def main() -> None:
    worker = SimWorker(SimConfig(port=0))
    await worker.start()
    try:
        async with aiohttp.ClientSession() as session:
            cold, warm = [], []
            for r in range(ROUNDS):
                prompt = [(r * 7919 + i) % 5000 + 10 for i in range(PROMPT_TOKENS)]
                cold.append((await _stream(session, worker.url, prompt, 1))[0])
                warm.append((await _stream(session, worker.url, prompt, 1))[0])
            itl1: list[float] = []
            for r in range(ROUNDS):
                times = await _stream(session, worker.url, [r + 1] * 32, DECODE_TOKENS)
                itl1 += _itl(times)
            itl32: list[float] = []
            for r in range(3):
                batches = await asyncio.gather(
                    *(
                        _stream(
                            session, worker.url, [r * 100 + k + 1] * 32, DECODE_TOKENS
                        )
                        for k in range(32)
                    )
                )
                for times in batches:
                    # The middle of each answer, when all 32 decode together.
                    itl32 += _itl(times)[8:-8]
    finally:
        await worker.stop()
    ms = 1000.0
    print(
        f"TTFT cold, {PROMPT_TOKENS}-token prompt: "
        f"median {statistics.median(cold) * ms:.1f} ms"
    )
    print(
        f"TTFT warm, same prompt again:   median {statistics.median(warm) * ms:.1f} ms"
    )
    print(
        f"ITL at batch 1:                 median {statistics.median(itl1) * ms:.1f} ms"
    )
    print(
        f"ITL at batch 32:                median {statistics.median(itl32) * ms:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
