"""The contract between the ext_proc server and routing policies.

A policy is pure code: it sees a ``RoutingRequest`` (what the request looks like)
and the pool's eligible ``Candidate``s (what the workers look like) and returns a
``Decision``. It does no I/O, knows nothing of gRPC or protobuf, and runs on the
event loop thread, so it must stay fast (microseconds) and never block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from corral.pool.worker import Worker, WorkerLoad

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """What a policy may know of a request.

    ``tokens`` are the prompt's token ids as the engine will see them (chat
    rendered through the template), or ``None`` when the request was not
    tokenized; ``text`` is the routing text in that case. ``routing_key`` is a
    session key taken from a configured header. ``headers`` holds lower-cased
    request headers, for policies that read one.
    """

    model: str
    tokens: Sequence[int] | None = None
    text: str | None = None
    token_count: int = 0
    routing_key: str | None = None
    # A factory, not a default: dataclasses refuse unhashable defaults such as
    # a mappingproxy (Python 3.11 checks ``__hash__``); the proxy itself is shared.
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)


@dataclass(frozen=True, slots=True)
class Candidate:
    """An eligible worker (ready, breaker closed) with its live load.

    ``load`` is the registry's live record; policies read it and never write it.
    """

    worker: Worker
    load: WorkerLoad

    @property
    def id(self) -> str:
        return self.worker.id

    @property
    def address(self) -> str:
        return self.worker.address


@dataclass(frozen=True, slots=True)
class Decision:
    """An ordered choice: ``workers[0]`` is the primary, the rest are fallbacks,
    all distinct. ``reason`` is a short, bounded label for metrics and logs."""

    workers: tuple[Worker, ...]
    reason: str = "pick"

    @property
    def primary(self) -> Worker:
        return self.workers[0]


class RoutingPolicy(Protocol):
    """Picks workers for one model pool. One instance per pool.

    ``pick`` is only called with at least one candidate. It returns every
    candidate at most once, primary first, and at most ``max_workers`` of them.
    ``on_worker_removed`` lets stateful policies (the cache-aware tree) forget a
    worker that left the pool.
    """

    name: str

    def pick(
        self, request: RoutingRequest, candidates: Sequence[Candidate], max_workers: int
    ) -> Decision: ...

    def on_worker_removed(self, worker_id: str) -> None: ...


PolicyFactory = Callable[[Mapping[str, Any]], RoutingPolicy]
"""Builds a policy from its ``params`` mapping; raises ``ConfigError`` on a bad one."""
