"""A paged KV cache with prefix reuse, as vLLM's automatic prefix caching keeps it.

Blocks hold ``block_size`` tokens. A full block is known by the hash of (its
parent block's hash, its tokens), so equal hashes mean equal prefixes. Blocks in
use by running requests are pinned; blocks no one uses stay cached and are
evicted least recently used first when new blocks are needed. Only full blocks
are cached; the partial tail block and decode blocks are anonymous.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

ROOT_HASH = 0


def block_hashes(tokens: Sequence[int], block_size: int) -> list[int]:
    """Chained hashes of the full blocks of ``tokens`` (tail left out).

    Python hashes tuples of ints the same way in every process (no hash seed is
    involved), so workers in different processes agree.
    """
    hashes: list[int] = []
    parent = ROOT_HASH
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        hashes.append(parent)
    return hashes


@dataclass
class Allocation:
    """The blocks one running request holds."""

    hashes: list[int]
    cached_tokens: int
    anonymous: int = 0
    tokens: int = 0
    released: bool = field(default=False, repr=False)


class KVCache:
    """Block accounting for one worker; not thread-safe (one event loop)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._refs: dict[int, int] = {}  # pinned hash -> number of holders
        self._free_cached: OrderedDict[int, None] = OrderedDict()  # LRU first
        self._anonymous = 0
        self.evictions = 0

    def __repr__(self) -> str:
        return (
            f"<KVCache used={self.used_blocks}/{self.num_blocks}"
            f" cached={len(self._free_cached)}>"
        )

    @property
    def used_blocks(self) -> int:
        return len(self._refs) + self._anonymous

    @property
    def usage(self) -> float:
        """Share of blocks pinned by running requests, within [0, 1]."""
        return min(1.0, self.used_blocks / self.num_blocks)

    def _available(self) -> int:
        return self.num_blocks - self.used_blocks

    def _take_block(self) -> None:
        # Room left by neither pinned nor cached blocks is taken first; then the
        # least recently used cached block goes. When everything is pinned the
        # block is still handed out (vLLM would preempt a request instead), and
        # usage stays capped at 1.
        if self.used_blocks + len(self._free_cached) >= self.num_blocks and (
            self._free_cached
        ):
            self._free_cached.popitem(last=False)
            self.evictions += 1

    def match(self, tokens: Sequence[int]) -> int:
        """How many prompt tokens a request would find cached right now."""
        return self._match(block_hashes(tokens, self.block_size), len(tokens))

    def _match(self, hashes: list[int], n_tokens: int) -> int:
        # As in vLLM, at least the last prompt token is always computed, so a
        # prompt that is cached whole still counts one block short of it.
        limit = max(0, (n_tokens - 1) // self.block_size)
        matched = 0
        for h in hashes[:limit]:
            if h not in self._refs and h not in self._free_cached:
                break
            matched += 1
        return matched * self.block_size

    def acquire(
        self, tokens: Sequence[int], *, force: bool = False
    ) -> Allocation | None:
        """Pin the prompt's blocks; ``None`` when they do not fit (unless forced).

        The prompt's cached prefix is reused; its other full blocks are
        registered at once, so a request arriving during this one's prefill
        already finds them (vLLM registers blocks as they are computed).
        """
        hashes = block_hashes(tokens, self.block_size)
        cached = self._match(hashes, len(tokens))
        tail = 1 if len(tokens) % self.block_size else 0
        new = sum(
            1 for h in hashes if h not in self._refs and h not in self._free_cached
        )
        reusable_cached = sum(1 for h in hashes if h in self._free_cached)
        room = self._available() - reusable_cached
        if not force and new + tail > room:
            return None
        for h in hashes:
            if h in self._refs:
                self._refs[h] += 1
            elif h in self._free_cached:
                del self._free_cached[h]
                self._refs[h] = 1
            else:
                self._take_block()
                self._refs[h] = 1
        alloc = Allocation(hashes=hashes, cached_tokens=cached, tokens=len(tokens))
        if tail:
            self._take_block()
            self._anonymous += 1
            alloc.anonymous = 1
        return alloc

    def grow(self, alloc: Allocation, total_tokens: int) -> None:
        """Hold enough anonymous blocks for ``total_tokens`` (prompt + output)."""
        if alloc.released:
            return
        needed = -(-total_tokens // self.block_size) - len(alloc.hashes)
        while alloc.anonymous < needed:
            self._take_block()
            self._anonymous += 1
            alloc.anonymous += 1
        alloc.tokens = total_tokens

    def release(self, alloc: Allocation) -> None:
        """Unpin a request's blocks; its full prompt blocks stay cached."""
        if alloc.released:
            return
        alloc.released = True
        self._anonymous -= alloc.anonymous
        # The chain's head is released last so that, in LRU order, a prefix
        # outlives the blocks that extend it (vLLM frees in reverse for this).
        for h in reversed(alloc.hashes):
            refs = self._refs[h] - 1
            if refs:
                self._refs[h] = refs
            else:
                del self._refs[h]
                self._free_cached[h] = None
        self._trim()

    def _trim(self) -> None:
        while self.used_blocks + len(self._free_cached) > self.num_blocks and (
            self._free_cached
        ):
            self._free_cached.popitem(last=False)
            self.evictions += 1

    def reset(self) -> int:
        """Drop every unpinned cached block; returns how many were dropped."""
        dropped = len(self._free_cached)
        self._free_cached.clear()
        return dropped
