"""Token-bucket rate limits per API key or tenant: requests per second, tokens per
minute, each with a burst.

A bucket holds at most ``capacity`` units and refills at ``rate`` units per second.
A request takes one unit from the request bucket and its prompt tokens from the
token bucket; if either would go below zero, the request is refused with 429 and a
``Retry-After`` that says when enough units will be back. A refused request takes
nothing from either bucket.

The key is the tenant header's value when one is configured, otherwise a SHA-256
digest of the ``authorization`` bearer token (the raw secret is never kept, logged
or used as a label), otherwise one shared anonymous key. The number of buckets is
bounded: the least recently used are forgotten first, and a forgotten bucket comes
back full, so an attacker cycling through more than ``max_keys`` keys gains at most
one burst per key.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from corral.config.settings import AdmissionConfig
from corral.errors import RateLimited

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

ANONYMOUS = "anonymous"
DEFAULT_MAX_KEYS = 10_000


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` units, refilled continuously at ``rate`` units per second."""

    capacity: float
    rate: float
    level: float
    updated_at: float

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        return cls(capacity=capacity, rate=rate, level=capacity, updated_at=now)

    def refill(self, now: float) -> None:
        if now > self.updated_at:
            self.level = min(
                self.capacity, self.level + (now - self.updated_at) * self.rate
            )
        self.updated_at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` units are available (0 if they are now).

        ``amount`` is clamped to the capacity: a request bigger than the whole
        burst waits for a full bucket instead of never passing.
        """
        amount = min(amount, self.capacity)
        deficit = amount - self.level
        return 0.0 if deficit <= 0 else deficit / self.rate

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + min(amount, self.capacity))


def tenant_key(headers: Mapping[str, str], tenant_header: str | None) -> str:
    """The rate-limit key of a request (module docstring); never the raw secret."""
    if tenant_header:
        value = headers.get(tenant_header.lower())
        if value:
            return "tenant:" + value
    authorization = headers.get("authorization", "")
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        digest = hashlib.sha256(credential.strip().encode()).hexdigest()
        return "key:" + digest[:32]
    return ANONYMOUS


@dataclass(slots=True)
class _Entry:
    requests: TokenBucket | None
    tokens: TokenBucket | None


@dataclass(frozen=True, slots=True)
class Charge:
    """What one admitted request took, so it can be given back if not served."""

    key: str
    tokens: float


class RateLimiter:
    """Request and token buckets per key. ``enabled`` is False when unconfigured."""

    def __init__(
        self,
        config: AdmissionConfig,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._tenant_header = config.tenant_header
        self._rps = config.rate_limit_requests_per_s
        self._request_burst = float(
            config.rate_limit_request_burst
            or (max(1, math.ceil(self._rps)) if self._rps else 1)
        )
        self._tps = (
            config.rate_limit_tokens_per_min / 60.0
            if config.rate_limit_tokens_per_min
            else None
        )
        self._token_burst = float(
            config.rate_limit_token_burst or (config.rate_limit_tokens_per_min or 1)
        )
        self._clock = clock
        self._max_keys = max_keys
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"<RateLimiter rps={self._rps} tokens_per_s={self._tps} "
            f"keys={len(self._entries)}>"
        )

    @property
    def enabled(self) -> bool:
        return self._rps is not None or self._tps is not None

    def charge(self, headers: Mapping[str, str], tokens: int) -> Charge:
        """Take one request and ``tokens`` tokens from the request's key.

        Raises ``RateLimited`` (429) with ``retry_after_s`` = whole seconds until
        both buckets could serve this request, at least 1.
        """
        key = tenant_key(headers, self._tenant_header)
        now = self._clock()
        entry = self._entry(key, now)
        wait = 0.0
        if entry.requests is not None:
            entry.requests.refill(now)
            wait = max(wait, entry.requests.wait_for(1))
        if entry.tokens is not None:
            entry.tokens.refill(now)
            wait = max(wait, entry.tokens.wait_for(tokens))
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            logger.debug(
                "rate limit: %s refused, retry after %ss", key[:12], retry_after
            )
            raise RateLimited(
                f"Rate limit reached for this API key; retry after {retry_after} s.",
                retry_after_s=retry_after,
            )
        if entry.requests is not None:
            entry.requests.take(1)
        if entry.tokens is not None:
            entry.tokens.take(tokens)
        return Charge(key=key, tokens=float(tokens))

    def refund(self, charge: Charge) -> None:
        """Give back what ``charge`` took (the request was refused further on)."""
        entry = self._entries.get(charge.key)
        if entry is None:
            return
        if entry.requests is not None:
            entry.requests.give_back(1)
        if entry.tokens is not None:
            entry.tokens.give_back(charge.tokens)

    def _entry(self, key: str, now: float) -> _Entry:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        entry = _Entry(
            requests=(
                TokenBucket.full(self._request_burst, self._rps, now)
                if self._rps
                else None
            ),
            tokens=(
                TokenBucket.full(self._token_burst, self._tps, now)
                if self._tps
                else None
            ),
        )
        self._entries[key] = entry
        if len(self._entries) > self._max_keys:
            self._entries.popitem(last=False)
        return entry
