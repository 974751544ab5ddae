"""Decision latency of every routing policy, printed as medians and tails.

Usage: ``python bench/routing_bench.py [--decisions N] [--tree-prompts N]``

For each policy and pool size (8, 64, 512 workers) it times ``pick`` over
realistic requests: 1-4k-token prompts that share system prompts across a few
dozen families, session keys, and random in-flight loads. Then it fills a
cache-aware tree with ``--tree-prompts`` prompts (100k by default, 1-4k tokens
each) and times decisions against that large tree. Everything is in-process;
nothing touches the network.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import resource
import statistics
import time
from array import array

from corral.config import PolicyConfig
from corral.pool import WorkerLoad, WorkerState, make_worker
from corral.routing import Candidate, RoutingRequest, build_policy

POLICIES = (
    "random",
    "round_robin",
    "power_of_two",
    "least_load",
    "consistent_hash",
    "prefix_hash",
    "cache_aware",
)
SIZES = (8, 64, 512)
FAMILIES = 40


def _candidates(size: int, rng: random.Random) -> list[Candidate]:
    out = []
    now = time.monotonic()
    for i in range(size):
        worker = make_worker(f"http://127.0.0.1:{20000 + i}", models=("m",))
        worker = dataclasses.replace(worker, state=WorkerState.READY)
        load = WorkerLoad(
            requests=rng.randrange(0, 8),
            tokens=rng.randrange(0, 16000),
            engine_running=float(rng.randrange(0, 8)),
            engine_waiting=float(rng.randrange(0, 3)),
            engine_kv_usage=rng.random() * 0.9,
            engine_updated_at=now + 3600,  # stays fresh for the whole run
        )
        out.append(Candidate(worker, load))
    return out


def _random_tokens(rng: random.Random, n: int) -> array:
    packed = array("I", rng.randbytes(4 * n))
    for i in range(len(packed)):  # keep ids in a realistic vocabulary range
        packed[i] %= 128_000
    return packed


class Prompts:
    """Prompts of 1-4k tokens: a family's system prompt plus a unique tail."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._heads = [
            _random_tokens(rng, rng.randrange(256, 1024)) for _ in range(FAMILIES)
        ]
        self._tail_pool = _random_tokens(rng, 1 << 20)

    def make(self, as_list: bool) -> RoutingRequest:
        rng = self._rng
        family = rng.randrange(FAMILIES)
        head = self._heads[family]
        total = rng.randrange(1024, 4096)
        tail_len = max(0, total - len(head))
        offset = rng.randrange(0, len(self._tail_pool) - tail_len)
        tokens = head + self._tail_pool[offset : offset + tail_len]
        return RoutingRequest(
            model="m",
            tokens=tokens.tolist() if as_list else tokens,
            token_count=len(tokens),
            routing_key=f"session-{rng.randrange(10_000)}",
        )


def _percentiles(samples: list[int]) -> tuple[float, float]:
    samples.sort()
    p50 = statistics.median(samples) / 1000
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000
    return p50, p99


def _time_policy(
    name: str, size: int, decisions: int, seed: int
) -> tuple[float, float]:
    rng = random.Random(seed)
    prompts = Prompts(rng)
    candidates = _candidates(size, rng)
    # Token ids arrive packed, as the ext_proc's tokenizer cache hands them over.
    requests = [prompts.make(as_list=False) for _ in range(256)]
    policy = build_policy(PolicyConfig(name=name))
    for request in requests:  # warm-up: rings built, trees populated
        policy.pick(request, candidates, 3)
    samples = []
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(decisions):
        request = requests[i % len(requests)]
        start = clock()
        policy.pick(request, candidates, 3)
        samples.append(clock() - start)
    return _percentiles(samples)


def _rss_mib() -> float:
    """Current resident set size (Linux), falling back to the peak elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _large_tree(prompts: int, decisions: int, seed: int) -> None:
    rng = random.Random(seed)
    source = Prompts(rng)
    candidates = _candidates(64, rng)
    policy = build_policy(PolicyConfig(name="cache_aware"))
    gc.collect()
    rss_before = _rss_mib()
    started = time.perf_counter()
    insert_samples = []
    clock = time.perf_counter_ns
    for _ in range(prompts):
        request = source.make(as_list=False)
        start = clock()
        policy.pick(request, candidates, 3)
        insert_samples.append(clock() - start)
    filled = time.perf_counter() - started
    tree = policy.token_tree  # type: ignore[attr-defined]
    print(
        f"cache_aware large tree: {prompts} prompts in {filled:.1f} s, {tree!r}, "
        f"RSS +{_rss_mib() - rss_before:.0f} MiB"
    )
    p50, p99 = _percentiles(insert_samples)
    print(f"  fill decisions (packed tokens)      p50 {p50:7.1f} us  p99 {p99:7.1f} us")
    requests = [source.make(as_list=True) for _ in range(512)]
    samples = []
    reasons: dict[str, int] = {}
    gc.collect()
    for i in range(decisions):
        request = requests[i % len(requests)]
        start = clock()
        decision = policy.pick(request, candidates, 3)
        samples.append(clock() - start)
        reasons[decision.reason] = reasons.get(decision.reason, 0) + 1
    p50, p99 = _percentiles(samples)
    print(f"  decisions (list[int] tokens)        p50 {p50:7.1f} us  p99 {p99:7.1f} us")
    print(f"  branches: {reasons}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--tree-prompts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    print(f"decision latency, {args.decisions} decisions each, max_workers=3")
    print(f"{'policy':<16}" + "".join(f"{f'n={n} p50/p99 us':>22}" for n in SIZES))
    for name in POLICIES:
        cells = []
        for size in SIZES:
            p50, p99 = _time_policy(name, size, args.decisions, args.seed)
            cells.append(f"{p50:9.1f} / {p99:7.1f}")
        print(f"{name:<16}" + "".join(f"{cell:>22}" for cell in cells))
    if args.tree_prompts > 0:
        _large_tree(args.tree_prompts, args.decisions, args.seed)


if __name__ == "__main__":
    main()
