"""Worker membership, health and load, shared by every part of the gateway."""

from corral.pool.registry import RegistrySnapshot, WorkerRegistry
from corral.pool.worker import (
    Worker,
    WorkerLoad,
    WorkerRole,
    WorkerState,
    make_worker,
    parse_worker_url,
)

__all__ = [
    "RegistrySnapshot",
    "Worker",
    "WorkerLoad",
    "WorkerRegistry",
    "WorkerRole",
    "WorkerState",
    "make_worker",
    "parse_worker_url",
]
