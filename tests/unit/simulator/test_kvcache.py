"""The simulated KV cache: chained block hashes, reuse, pinning, LRU eviction."""

from __future__ import annotations

from corral.simulator.kvcache import KVCache, block_hashes


def test_block_hashes_chain_by_prefix_and_skip_the_tail():
    a = block_hashes(list(range(40)), 16)
    b = block_hashes([*range(32), 99, 98], 16)
    assert len(a) == 2 and a == b[:2]
    shifted = block_hashes([1000, *range(16, 32)], 16)
    # Same tokens in block 2, different parent: a different hash.
    assert block_hashes([*range(16), *range(16, 32)], 16)[1] != shifted[0]


def test_released_prompt_is_reused_by_the_next_request():
    cache = KVCache(num_blocks=100, block_size=16)
    first = cache.acquire(list(range(50)))
    assert first is not None and first.cached_tokens == 0
    cache.release(first)
    second = cache.acquire([*range(48), 7, 7, 7])
    assert second is not None and second.cached_tokens == 48


def test_whole_prompt_hit_still_computes_the_last_token():
    cache = KVCache(num_blocks=100, block_size=16)
    cache.release(cache.acquire(list(range(32))))
    again = cache.acquire(list(range(32)))
    assert again.cached_tokens == 16


def test_least_recently_used_blocks_are_evicted_first():
    # Each prompt is two full blocks plus a tail block: three blocks while running.
    cache = KVCache(num_blocks=6, block_size=16)
    a, b, c, d = ([*range(s, s + 32), 1] for s in (0, 100, 200, 300))
    cache.release(cache.acquire(a))
    cache.release(cache.acquire(b))
    assert cache.match(a) == 32 and cache.evictions == 0
    cache.release(cache.acquire(c))
    # One block had to go: the oldest prompt's last block, its prefix stays.
    assert cache.evictions == 1
    assert cache.match(a) == 16
    assert cache.match(b) == 32 and cache.match(c) == 32
    cache.release(cache.acquire(d))
    assert cache.match(a) == 0
    assert cache.match(d) == 32


def test_pinned_blocks_are_never_evicted_and_block_admission():
    cache = KVCache(num_blocks=4, block_size=16)
    held = cache.acquire(list(range(48)))
    assert cache.usage == 0.75
    assert cache.acquire(list(range(100, 148))) is None
    forced = cache.acquire(list(range(100, 148)), force=True)
    assert forced is not None and cache.usage == 1.0
    assert cache.match([*range(48), 1]) == 48
    cache.release(forced)
    cache.release(held)
    assert cache.usage == 0.0


def test_decode_growth_takes_blocks_and_release_returns_them():
    cache = KVCache(num_blocks=10, block_size=16)
    alloc = cache.acquire(list(range(20)))
    assert cache.used_blocks == 2
    cache.grow(alloc, 20 + 30)
    assert cache.used_blocks == 4
    cache.release(alloc)
    assert cache.used_blocks == 0
    assert cache.reset() == 1
