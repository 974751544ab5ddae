"""A concurrency limit per pool, with a bounded FIFO queue and a queue timeout.

At most ``limit`` requests of a pool hold a slot; the next ``queue_size`` wait in
arrival order; one more is refused at once with 429 ``admission_queue_full``
(SMG's status and code for the same case). A waiter not served within
``timeout_s`` gets 503 ``admission_queue_timeout``: the pool, not the client, is
too slow. A waiter whose task is cancelled (the client went away, so the ext_proc
stream ended) leaves the queue, and if a slot had just been handed to it, the slot
goes to the next waiter.

A released slot is handed straight to the oldest waiter, never put back for any
newcomer to grab, which is what keeps the queue first in, first out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from corral.errors import RateLimited, ServiceUnavailable
from corral.observability.metrics import ADMISSION, QUEUE_DEPTH

logger = logging.getLogger(__name__)

Release = Callable[[], None]

QUEUE_FULL_RETRY_AFTER_S = 1
QUEUE_TIMEOUT_RETRY_AFTER_S = 1


class ConcurrencyLimiter:
    """Slots and waiters of one pool. Use from the event loop thread only."""

    def __init__(
        self, model: str, *, limit: int, queue_size: int, timeout_s: float
    ) -> None:
        self.model = model
        self.limit = limit
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return (
            f"<ConcurrencyLimiter {self.model} in_flight={self.in_flight}/"
            f"{self.limit} queued={len(self._waiters)}/{self.queue_size}>"
        )

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> Release:
        """Wait for a slot; returns the idempotent callable that gives it back.

        Raises ``RateLimited`` (429) when the queue is full and
        ``ServiceUnavailable`` (503) when the wait exceeds the timeout.
        """
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return self._releaser()
        if len(self._waiters) >= self.queue_size:
            ADMISSION.labels(self.model, "queue_full").inc()
            raise RateLimited(
                f"Too many requests queued for model {self.model}.",
                code="admission_queue_full",
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._publish_depth()
        try:
            async with asyncio.timeout(self.timeout_s):
                await waiter
        except TimeoutError:
            if self._granted(waiter):
                return self._releaser()  # the slot came as the clock ran out
            self._leave(waiter)
            ADMISSION.labels(self.model, "queue_timeout").inc()
            raise ServiceUnavailable(
                f"Timed out after {self.timeout_s:g} s waiting for capacity for "
                f"model {self.model}.",
                code="admission_queue_timeout",
                retry_after_s=QUEUE_TIMEOUT_RETRY_AFTER_S,
            ) from None
        except asyncio.CancelledError:
            if self._granted(waiter):
                self._hand_on()
            else:
                self._leave(waiter)
            ADMISSION.labels(self.model, "cancelled").inc()
            raise
        return self._releaser()

    def _releaser(self) -> Release:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._hand_on()

        return release

    def _hand_on(self) -> None:
        """Give a freed slot to the oldest live waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._publish_depth()
                return
        self.in_flight -= 1
        self._publish_depth()

    @staticmethod
    def _granted(waiter: asyncio.Future[None]) -> bool:
        return waiter.done() and not waiter.cancelled()

    def _leave(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        self._publish_depth()

    def _publish_depth(self) -> None:
        QUEUE_DEPTH.labels(self.model).set(len(self._waiters))
