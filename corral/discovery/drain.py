"""Draining: take a worker out of rotation, let its requests finish, then remove it.

Every source that deletes a worker goes through here, so removal looks the same
whether a manifest line vanished, an operator called ``DELETE /workers/{id}`` or
a pod went away: the worker turns DRAINING at once (routing stops picking it and
the xDS server marks its endpoint DRAINING), and it leaves the registry when the
gateway has nothing in flight on it, or when the timeout runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

from corral.pool import WorkerRegistry, WorkerState

logger = logging.getLogger(__name__)

DEFAULT_DRAIN_POLL_S = 0.05
"""How often the in-flight count is read; it changes without notifications."""

# Background drains by registry, then worker id. Strong references to the tasks
# live here so they are not garbage-collected mid-flight (asyncio keeps only weak
# ones), and so a second request to drain the same worker joins the first.
_drains: weakref.WeakKeyDictionary[WorkerRegistry, dict[str, asyncio.Task[bool]]] = (
    weakref.WeakKeyDictionary()
)


async def drain_and_remove(
    registry: WorkerRegistry,
    worker_id: str,
    timeout_s: float,
    *,
    poll_interval_s: float = DEFAULT_DRAIN_POLL_S,
) -> bool:
    """Drain one worker and remove it; return True if it emptied before the timeout.

    Safe to call twice, concurrently or not: a second call waits alongside the
    first and whichever finishes first removes the worker. An unknown id returns
    False at once. If the worker stops being DRAINING while this waits (it was
    removed, or re-added by its source), the wait ends without removing anything.
    """
    worker = registry.get(worker_id)
    if worker is None:
        return False
    registry.set_state(worker_id, WorkerState.DRAINING)
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        current = registry.get(worker_id)
        if current is None or current.state is not WorkerState.DRAINING:
            return current is None
        in_flight = registry.load(worker_id).requests
        if in_flight <= 0:
            registry.remove(worker_id)
            return True
        if time.monotonic() >= deadline:
            logger.warning(
                "worker %s still had %d requests in flight after %.1fs of draining; "
                "removing it anyway",
                worker_id,
                in_flight,
                timeout_s,
            )
            registry.remove(worker_id)
            return False
        await asyncio.sleep(min(poll_interval_s, max(0.0, deadline - time.monotonic())))


def start_drain(
    registry: WorkerRegistry, worker_id: str, timeout_s: float
) -> asyncio.Task[bool]:
    """Run ``drain_and_remove`` in the background; one task per worker.

    The worker is DRAINING by the time this returns. Calling it again for a
    worker already draining returns the running task. Must be called on the
    event loop thread.
    """
    tasks = _drains.setdefault(registry, {})
    running = tasks.get(worker_id)
    if running is not None and not running.done():
        return running
    # Flip the state now rather than on the task's first step, so a caller that
    # reads the registry right after this call sees the worker out of rotation.
    registry.set_state(worker_id, WorkerState.DRAINING)
    task = asyncio.get_running_loop().create_task(
        drain_and_remove(registry, worker_id, timeout_s),
        name=f"corral-drain-{worker_id}",
    )
    tasks[worker_id] = task

    def forget(done: asyncio.Task[bool]) -> None:
        if tasks.get(worker_id) is done:
            del tasks[worker_id]

    task.add_done_callback(forget)
    return task


def cancel_drain(registry: WorkerRegistry, worker_id: str) -> bool:
    """Stop a background drain, leaving the worker in the registry as it is.

    Returns True if a drain was running. The worker stays DRAINING (the registry
    lets a draining worker only leave); a source that wants it back removes and
    re-adds it, which is what ``sync_source`` does.
    """
    task = _drains.get(registry, {}).pop(worker_id, None)
    if task is None or task.done():
        return False
    task.cancel()
    return True


def draining_ids(registry: WorkerRegistry) -> frozenset[str]:
    """Ids with a background drain still running (for diagnostics and tests)."""
    return frozenset(
        i for i, task in _drains.get(registry, {}).items() if not task.done()
    )
