"""What the gateway knows of one worker: identity, health state and live load."""

from __future__ import annotations

import enum
import ipaddress
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from corral.errors import InvalidRequest


class WorkerState(enum.StrEnum):
    """Health state. Only READY workers are offered to routing policies.

    PENDING   registered, not yet probed successfully
    READY     answering health checks; takes new requests
    NOT_READY failing health checks; comes back to READY when it recovers
    DRAINING  being removed; finishes what it has, takes nothing new
    """

    PENDING = "pending"
    READY = "ready"
    NOT_READY = "not_ready"
    DRAINING = "draining"


class WorkerRole(enum.StrEnum):
    REGULAR = "regular"
    PREFILL = "prefill"
    DECODE = "decode"


_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Worker:
    """One inference engine endpoint, immutable; the registry swaps whole copies.

    ``id`` is stable for the worker's life (by default its ``host:port``).
    ``address`` is what Envoy and the endpoint picker protocol use: ``host:port``,
    with IPv6 hosts in brackets.
    """

    id: str
    url: str
    host: str
    port: int
    models: tuple[str, ...] = ()
    role: WorkerRole = WorkerRole.REGULAR
    # A factory, not a plain default: a mappingproxy is unhashable on Python 3.11,
    # which dataclasses refuse as a default value.
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    state: WorkerState = WorkerState.PENDING
    source: str = "static"
    bootstrap_port: int | None = None
    admitted: bool = True
    """The source's own verdict (a Kubernetes pod's Ready condition). A worker
    its source does not admit stays out of rotation whatever health checks say."""
    ip: str | None = None
    """The IP literal Envoy dials: the host itself when it is one, else what the
    name resolved to (health checks resolve it again on every round)."""

    @property
    def address(self) -> str:
        """``ip:port`` as Envoy and the endpoint picker protocol name the worker
        (the host name until it has been resolved)."""
        host = self.ip or self.host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}"

    @property
    def dial_url(self) -> str:
        """The base URL the gateway's own probes use: the resolved address for
        plain HTTP (the same one Envoy dials), the named URL for TLS."""
        if self.ip is None or self.url.startswith("https:"):
            return self.url
        return f"http://{self.address}"

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY

    def serves(self, model: str) -> bool:
        return model in self.models


def parse_worker_url(url: str) -> tuple[str, str, int]:
    """Check a worker URL and return ``(normalised_url, host, port)``.

    Only ``http://host:port`` with a host name or address (a path prefix is
    refused: Envoy sends the client's path unchanged). Raises ``InvalidRequest``
    naming what is wrong.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest("worker url must be a non-empty string", param="url")
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"invalid worker url {url!r}: {exc}", param="url") from exc
    if parts.scheme != "http":
        # The pool clusters Envoy gets carry no TLS settings: an https worker
        # would be spoken to in plain text. Refuse rather than mislead.
        raise InvalidRequest(
            f"invalid worker url {url!r}: scheme must be http "
            "(TLS to workers is not supported)",
            param="url",
        )
    host = parts.hostname
    if not host:
        raise InvalidRequest(f"invalid worker url {url!r}: no host", param="url")
    if ip_literal(host) is None and not _HOST_NAME.fullmatch(host):
        raise InvalidRequest(
            f"invalid worker url {url!r}: {host!r} is not a host name or address",
            param="url",
        )
    if port is None:
        port = 80
    if port == 0:
        raise InvalidRequest(f"invalid worker url {url!r}: port 0", param="url")
    if parts.username is not None or parts.password is not None:
        # Envoy would not send them, and they would show in logs and listings.
        raise InvalidRequest(
            f"invalid worker url: credentials in the URL are not supported "
            f"({parts.scheme}://{host}:{port})",
            param="url",
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidRequest(
            f"invalid worker url {url!r}: a path, query or fragment is not allowed",
            param="url",
        )
    bracketed = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{bracketed}:{port}", host, port


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
"""A DNS host name (RFC 1123 labels)."""


def ip_literal(host: str) -> str | None:
    """``host`` as an IP literal (``localhost`` is 127.0.0.1), or None for a
    name that needs resolving."""
    if host.lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def make_worker(
    url: str,
    *,
    models: tuple[str, ...] = (),
    role: WorkerRole | str = WorkerRole.REGULAR,
    labels: Mapping[str, str] | None = None,
    source: str = "static",
    worker_id: str | None = None,
    bootstrap_port: int | None = None,
) -> Worker:
    """Build a PENDING worker from a URL, validating every field."""
    normalised, host, port = parse_worker_url(url)
    try:
        role = WorkerRole(role)
    except ValueError as exc:
        raise InvalidRequest(
            f"invalid role {role!r}: expected regular, prefill or decode", param="role"
        ) from exc
    bracketed = f"[{host}]" if ":" in host else host
    return Worker(
        ip=ip_literal(host),
        id=worker_id or f"{bracketed}:{port}",
        url=normalised,
        host=host,
        port=port,
        models=tuple(models),
        role=role,
        labels=MappingProxyType(dict(labels or {})),
        source=source,
        bootstrap_port=bootstrap_port,
    )


@dataclass(slots=True)
class WorkerLoad:
    """Live load of one worker. Mutated only on the event loop thread.

    ``requests`` and ``tokens`` count what the gateway has in flight on the worker
    (incremented when routed, released at end of stream or abort). The ``engine_*``
    fields come from the worker's own metrics and are ignored once older than the
    staleness bound given to ``engine_fresh``.
    """

    requests: int = 0
    tokens: int = 0
    processed: int = 0
    engine_running: float | None = None
    engine_waiting: float | None = None
    engine_kv_usage: float | None = None
    engine_updated_at: float = field(default=0.0)

    def engine_fresh(self, max_age_s: float, now: float | None = None) -> bool:
        if self.engine_updated_at <= 0:
            return False
        now = time.monotonic() if now is None else now
        return now - self.engine_updated_at <= max_age_s

    def begin(self, tokens: int) -> None:
        self.requests += 1
        self.tokens += tokens

    def end(self, tokens: int) -> None:
        self.requests = max(0, self.requests - 1)
        self.tokens = max(0, self.tokens - tokens)
        self.processed += 1
