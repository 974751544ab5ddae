"""Tokenization cost with and without the cache, and the L0 hit latency.

Uses the TinyLlama tokenizer from the shared folder (or ``--tokenizer``).
Prompts of about 1k, 10k and 100k tokens are chat conversations rendered
through the template; "l1" encodes the conversation with one more turn after
the shorter one was cached. Prints medians of bounded repetitions:

    python bench/tokenizer_bench.py [--tokenizer PATH] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from corral.tokenizer import ModelTokenizer, load_tokenizer
from corral.tokenizer.cache import TokenizerCache

DEFAULT_TOKENIZER = (
    Path(__file__).resolve().parents[2] / "shared/tokenizers/TinyLlama-1.1B-Chat-v1.0"
)


def _conversation(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a careful assistant."}]
    for i in range(turns):
        messages.append(
            {
                "role": "user",
                "content": f"Item {i}: summarise the "
                f"report section {i} about throughput and latency.",
            }
        )
        messages.append(
            {
                "role": "assistant",
                "content": f"Section {i} reports a "
                "steady rise in throughput with flat tail latency.",
            }
        )
    return messages


def _median_us(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def _l1_seconds(tokenizer: ModelTokenizer, shorter: str, prompt: str) -> float:
    """One L1 hit: the shorter conversation cached, the longer one encoded."""
    cache = TokenizerCache(tokenizer, verify_samples=0)
    cache.encode(shorter, add_special_tokens=False)
    started = time.perf_counter()
    result = cache.encode(prompt, add_special_tokens=False)
    elapsed = time.perf_counter() - started
    assert result.level == "l1"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    per_turn = (
        len(
            tokenizer.encode(
                tokenizer.render_chat(_conversation(10)), add_special_tokens=False
            )
        )
        / 10
    )
    print(f"tokenizer {tokenizer.name}; ~{per_turn:.0f} tokens per turn")
    print(f"{'tokens':>8} {'uncached_us':>12} {'l0_hit_us':>10} {'l1_hit_us':>10}")
    for target in (1_000, 10_000, 100_000):
        turns = max(1, round(target / per_turn))
        shorter = tokenizer.render_chat(_conversation(turns - 1))
        prompt = tokenizer.render_chat(_conversation(turns))
        count = len(tokenizer.encode(prompt, add_special_tokens=False))
        uncached = _median_us(
            partial(tokenizer.encode, prompt, add_special_tokens=False), args.repeat
        )
        cache = TokenizerCache(tokenizer)
        cache.encode(prompt, add_special_tokens=False)
        l0 = _median_us(
            partial(cache.encode, prompt, add_special_tokens=False), args.repeat * 20
        )
        l1 = (
            statistics.median(
                _l1_seconds(tokenizer, shorter, prompt) for _ in range(args.repeat)
            )
            * 1e6
        )
        print(f"{count:>8} {uncached:>12.0f} {l0:>10.1f} {l1:>10.0f}")


if __name__ == "__main__":
    main()
