"""Running a set of simulated workers until the process is told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from corral.simulator.config import SimConfig
from corral.simulator.server import SimWorker

logger = logging.getLogger(__name__)


async def run_workers(
    configs: Sequence[SimConfig], *, stop: asyncio.Event | None = None
) -> None:
    """Start one worker per config, print a ready line for each, serve until
    ``stop`` is set or SIGINT/SIGTERM arrives, then stop them all.

    With a single config the worker owns the process, so the exit fault may
    end it. A worker that fails to bind stops the ones already started and
    the error propagates.
    """
    stop = stop or asyncio.Event()
    workers = [SimWorker(c, owns_process=len(configs) == 1) for c in configs]
    started: list[SimWorker] = []
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):
            pass  # not the main thread, or a platform without signal support
    try:
        for worker in workers:
            await worker.start()
            started.append(worker)
            cfg = worker.config
            print(
                f"corral sim: worker {worker.id} serving {cfg.model} ({cfg.engine})"
                f" on {worker.url}",
                flush=True,
            )
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await asyncio.gather(*(w.stop() for w in started), return_exceptions=True)
        logger.info("stopped %d simulated workers", len(started))
        sys.stdout.flush()
