"""Where a picker's stream hands a request's books to the observer's stream.

Corral's own bootstrap runs two ext_proc filters on every request: the picker
(request phases only, awaited) and, after it, the observer
(``observability_mode: true``: Envoy sends the response side and never waits
for an answer, envoy.md Q5/Q6). Envoy opens one gRPC stream per filter, so the
two halves of one request arrive on two unrelated streams.

They meet by a ticket. When the picker routes a request it charges the worker
and leaves ``(request id, ticket)`` here; the ticket travels to Envoy as
dynamic metadata (``headers.TICKET_NAMESPACE``), which the bootstrap forwards
to the observer's stream with its request headers. Clients cannot write dynamic
metadata and every ticket is unique within this process (and carries a random
prefix, so another Corral process behind the same cluster never matches it).
Two concurrent requests with the same client-sent ``x-request-id`` therefore
still meet their own observers. A key is claimed at most once.

Release, exactly once per request (the ledger's ``finished`` flag):

- the observer sees the response's end of stream: complete;
- the observer's stream ends without it: an abort;
- no observer ever claims the request (its filter is missing, or its stream
  failed): when the picker's stream ends (Envoy ends it with the HTTP stream,
  seen on Envoy 1.40) plus ``grace_s``, the charge is released unobserved.
  The grace is needed because the observer's first message may reach the
  server after the picker's stream has ended: Envoy sends observer messages
  without waiting, and on an idle loopback they were seen ~0.5 ms after the
  picker's EOF for a non-streamed request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Protocol

logger = logging.getLogger(__name__)

OBSERVER_GRACE_S = 3.0
"""How long a routed request whose picker stream has ended waits for its
observer before its charge is released unobserved."""


class Settleable(Protocol):
    """What a meeting needs of a request's ledger."""

    finished: bool

    def settle_unobserved(self) -> None: ...


Key = tuple[str, str]


class Meetings:
    """Routed requests waiting for (or held by) their observer. Loop thread only."""

    def __init__(self, grace_s: float = OBSERVER_GRACE_S) -> None:
        self.grace_s = grace_s
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._waiting: dict[Key, Settleable] = {}
        self._claimed: set[Key] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    def announce(self, request_id: str | None, ledger: Settleable) -> Key:
        """Register a routed request; returns its key (the ticket is ``key[1]``)."""
        key = (request_id or "", f"{self._prefix}-{next(self._counter)}")
        self._waiting[key] = ledger
        return key

    def claim(self, request_id: str | None, ticket: str) -> Settleable | None:
        """The ledger an observer stream will settle, or ``None`` when the key is
        unknown, already settled, or already claimed by another stream."""
        key = (request_id or "", ticket)
        if key in self._claimed:
            return None
        ledger = self._waiting.get(key)
        if ledger is None or ledger.finished:
            return None
        self._claimed.add(key)
        return ledger

    def claimed(self, key: Key) -> bool:
        return key in self._claimed

    def forget(self, key: Key) -> None:
        """The request is settled: its key is gone."""
        self._waiting.pop(key, None)
        self._claimed.discard(key)

    def picker_ended(self, key: Key) -> None:
        """The picker's stream is over. A request no observer has claimed gets
        ``grace_s`` more; a claimed one is settled by its observer's stream,
        which Envoy ends at ``deferred_close_timeout`` at the latest."""
        if key in self._claimed or key not in self._waiting:
            return
        asyncio.get_running_loop().call_later(self.grace_s, self._expire, key)

    def _expire(self, key: Key) -> None:
        if key in self._claimed:
            return
        ledger = self._waiting.pop(key, None)
        if ledger is None or ledger.finished:
            return
        logger.debug("request %s: no observer came; released unobserved", key[0])
        ledger.settle_unobserved()
