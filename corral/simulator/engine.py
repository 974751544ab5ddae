"""The simulated engine: admission, the waiting queue, and what each step costs.

At most ``max_num_seqs`` requests run; the others wait in FIFO order, and a
waiting request also stays queued while the KV cache cannot hold its prompt
(unless nothing runs at all). Each running request sleeps through its own
prefill, whose length grows with the prompt tokens not found in the prefix
cache, then through decode steps whose length grows with the number of
sequences decoding at that moment. Sleeps are simulated seconds times
``time_scale``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from corral.simulator.config import SimConfig
from corral.simulator.kvcache import Allocation, KVCache

logger = logging.getLogger(__name__)


class LoadListener(Protocol):
    """What the engine reports as it works (the metrics implement it)."""

    def set_load(self, running: int, waiting: int, kv_usage: float) -> None: ...

    def prefix_lookup(self, queries: int, hits: int) -> None: ...


@dataclass(eq=False)
class _Waiter:
    prompt: Sequence[int]
    seqs: int
    granted: asyncio.Future[Allocation]


@dataclass(eq=False)
class Slot:
    """A running request's hold on the engine."""

    engine: Engine
    alloc: Allocation
    seqs: int
    arrived: float
    started: float
    _next_at: float = field(default=0.0, repr=False)

    @property
    def cached_tokens(self) -> int:
        return self.alloc.cached_tokens

    @property
    def queue_time(self) -> float:
        return self.started - self.arrived

    async def prefill(self) -> None:
        """Sleep for the cost of computing the prompt tokens not in the cache."""
        cfg = self.engine.config
        uncached = self.alloc.tokens - self.alloc.cached_tokens
        cost = cfg.prefill_base_s + cfg.prefill_per_token_s * uncached
        await asyncio.sleep(cost * cfg.time_scale)
        self._next_at = time.monotonic()

    async def decode_step(self, active_seqs: int, total_tokens: int) -> None:
        """Sleep for one decode step at the current batch size.

        ``active_seqs`` is how many of this request's sequences still decode;
        waits are measured from a deadline so that timer slack does not add
        up over a long answer.
        """
        engine = self.engine
        engine.decoding += active_seqs - self.seqs
        self.seqs = active_seqs
        engine.kv.grow(self.alloc, total_tokens)
        engine.report()
        cfg = engine.config
        cost = cfg.decode_base_s + cfg.decode_per_seq_s * engine.decoding
        self._next_at = max(self._next_at + cost * cfg.time_scale, time.monotonic())
        await asyncio.sleep(self._next_at - time.monotonic())


class Engine:
    """One worker's scheduler and KV cache; lives on one event loop."""

    def __init__(self, config: SimConfig, listener: LoadListener) -> None:
        self.config = config
        self.kv = KVCache(config.num_blocks, config.block_size)
        self._listener = listener
        self._waiting: deque[_Waiter] = deque()
        self._running = 0
        self.decoding = 0  # sequences of running requests, the batch size

    def __repr__(self) -> str:
        return (
            f"<Engine running={self._running} waiting={len(self._waiting)} {self.kv}>"
        )

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def slot(self, prompt: Sequence[int], seqs: int = 1) -> AsyncIterator[Slot]:
        """Wait for admission, hold a slot, and give it back on exit or cancel.

        A caller cancelled while waiting leaves the queue; one cancelled while
        running frees its slot and blocks at once, so the next request starts.
        """
        arrived = time.monotonic()
        waiter = _Waiter(prompt, seqs, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        self._schedule()
        try:
            alloc = await waiter.granted
        except asyncio.CancelledError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self._finish(waiter.granted.result(), seqs)
            else:
                self._remove(waiter)
            raise
        slot = Slot(self, alloc, seqs, arrived, time.monotonic())
        try:
            yield slot
        finally:
            self._finish(alloc, slot.seqs)

    def reset_cache(self) -> int:
        dropped = self.kv.reset()
        self.report()
        return dropped

    def _remove(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):  # granted meanwhile, not queued
            self._waiting.remove(waiter)
        self._schedule()

    def _finish(self, alloc: Allocation, seqs: int) -> None:
        self._running -= 1
        self.decoding -= seqs
        self.kv.release(alloc)
        self._schedule()

    def _schedule(self) -> None:
        while self._waiting and self._running < self.config.max_num_seqs:
            head = self._waiting[0]
            alloc = self.kv.acquire(head.prompt, force=self._running == 0)
            if alloc is None:
                break  # the head waits for blocks; FIFO keeps the rest behind it
            self._waiting.popleft()
            self._running += 1
            self.decoding += head.seqs
            self._listener.prefix_lookup(alloc.tokens, alloc.cached_tokens)
            head.granted.set_result(alloc)
        self.report()

    def report(self) -> None:
        self._listener.set_load(self._running, len(self._waiting), self.kv.usage)
