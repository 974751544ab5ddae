"""Simulated vLLM and SGLang workers for tests, the local stack and benchmarks.

Nothing else in ``corral`` imports this package; it only stands in for GPU
engines over HTTP.
"""

from corral.simulator.config import FaultConfig, SimConfig
from corral.simulator.runner import run_workers
from corral.simulator.server import WORKER_HEADER, SimWorker

__all__ = ["WORKER_HEADER", "FaultConfig", "SimConfig", "SimWorker", "run_workers"]
