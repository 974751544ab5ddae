"""What one request costs and how it is counted: the in-flight charge on a
worker, the admission slot, what the response shows (served worker, status,
usage, timings), and the metrics and access log line at its end.

``RequestLedger`` is the base of ``RequestStream``: the stream speaks the
protocol, the ledger keeps the books. Its contract: the charge on a worker and
the admission slot are released exactly once, whether the response ended
normally (``_finish``), was refused (``_fail``), the gRPC stream stopped first
(``close``, an abort) or no observer ever reported on it
(``settle_unobserved``).

The response side (``observe_response_headers``, ``observe_response_body``)
is one code path for both places the response can be seen: the picker's own
stream (a mesh's single filter with response phases) and the observer
filter's stream of Corral's own bootstrap (``watch.ObserverStream``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from corral.errors import GatewayError
from corral.extproc import headers as names
from corral.extproc import responses
from corral.extproc.context import ServerContext
from corral.extproc.hooks import Release
from corral.extproc.modes import served_endpoint
from corral.extproc.observe import ResponseObserver
from corral.observability.metrics import (
    ABORTS,
    E2E_SECONDS,
    IN_FLIGHT,
    ITL_SECONDS,
    OUTPUT_TOKENS,
    PROMPT_TOKENS,
    REQUESTS,
    TTFT_SECONDS,
    bounded_status,
)

if TYPE_CHECKING:
    from corral.extproc.meeting import Key

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("corral.access")

NO_WORKER = "none"
UNKNOWN_MODEL = "unknown"
UNOBSERVED = "unobserved"
"""Status label of a request whose response nobody reported on."""


def header_map(message: pb.HttpHeaders) -> dict[str, str]:
    """Headers of an ext_proc message, keys lower-cased."""
    # Envoy sends values in raw_value (bytes) unless configured otherwise.
    return {
        h.key.lower(): h.raw_value.decode("utf-8", "replace")
        if h.raw_value
        else h.value
        for h in message.headers.headers
    }


class RequestLedger:
    """Charges, releases and counts of one request. Event loop thread only."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.started = time.monotonic()
        self.request_id: str | None = None
        self.method = ""
        self.path = ""
        self.error_dialect = "openai"
        """The API dialect of error bodies: ``anthropic`` on ``/v1/messages``."""
        self.pool: str | None = None
        self.policy_name = "none"
        self.reason = ""
        self.worker_id: str | None = None
        self.tokens = 0
        self.status: int | None = None
        self.observer: ResponseObserver | None = None
        self.finished = False
        self.meeting: Key | None = None
        """Set while the request waits for (or is held by) an observer stream."""
        self._charged = False
        self._release_admission: Release | None = None

    @property
    def model_label(self) -> str:
        return self.pool or UNKNOWN_MODEL

    def _charge(self, worker_id: str) -> None:
        load = self.ctx.registry.load(worker_id)
        load.begin(self.tokens)
        self.worker_id = worker_id
        self._charged = True
        IN_FLIGHT.labels(worker_id).set(load.requests)

    def _uncharge(self) -> None:
        if not self._charged or self.worker_id is None:
            return
        load = self.ctx.registry.load(self.worker_id)
        load.requests = max(0, load.requests - 1)
        load.tokens = max(0, load.tokens - self.tokens)
        IN_FLIGHT.labels(self.worker_id).set(load.requests)
        self._charged = False

    def _release(self) -> None:
        if self._charged and self.worker_id is not None:
            load = self.ctx.registry.load(self.worker_id)
            load.end(self.tokens)
            IN_FLIGHT.labels(self.worker_id).set(load.requests)
            self._charged = False
        if self.meeting is not None:
            self.ctx.meetings.forget(self.meeting)
        release, self._release_admission = self._release_admission, None
        if release is not None:
            try:
                release()
            except Exception:
                logger.exception("admission release failed")

    # -- what the response shows --------------------------------------------------

    def observe_response_headers(self, request: pb.ProcessingRequest) -> None:
        """Status, the worker that served (the charge follows it) and the start of
        body observation; headers that end the stream finish the request."""
        message = request.response_headers
        headers = header_map(message)
        status = headers.get(":status", "")
        self.status = int(status) if status.isdigit() else None
        # The protocol's served-endpoint metadata when the mesh sends it, else
        # the upstream.address attribute; both name the host after retries.
        served = served_endpoint(request) or self._served_address(request)
        if served and self.worker_id is not None:
            self._follow(served)
        self.observer = ResponseObserver(self.started, headers.get("content-type", ""))
        if message.end_of_stream:
            self._finish()

    def observe_response_body(self, message: pb.HttpBody) -> None:
        """One response chunk, read on the side; end of stream finishes."""
        if self.observer is not None and message.body:
            self.observer.chunk(message.body, time.monotonic())
        if message.end_of_stream:
            self._finish()

    @staticmethod
    def _served_address(request: pb.ProcessingRequest) -> str | None:
        attributes = request.attributes.get(names.EXT_PROC_ATTRIBUTES)
        if attributes is None:
            return None
        value = attributes.fields.get(names.UPSTREAM_ADDRESS)
        return value.string_value if value is not None and value.string_value else None

    def _follow(self, address: str) -> None:
        """Move the charge to the worker that really served, if Envoy retried."""
        current = self.ctx.registry.get(self.worker_id or "")
        if current is not None and current.address == address:
            return
        served = self.ctx.registry.find_by_address(address)
        if served is None or served.id == self.worker_id:
            return
        previous = self.worker_id
        assert previous is not None
        # Envoy moves on only after a failed attempt (connect failure, reset,
        # retriable status): that attempt counts against the primary.
        self.ctx.breaker.record_outcome(previous, None, True)
        self._uncharge()
        self._charge(served.id)
        logger.debug(
            "request %s retried from %s to %s", self.request_id, previous, served.id
        )

    # -- the end ----------------------------------------------------------------

    def _finish(self) -> None:
        """The response ended normally (end of stream seen)."""
        if self.finished:
            return
        self.finished = True
        try:
            now = time.monotonic()
            model = self.model_label
            if self.worker_id is not None:
                self.ctx.breaker.record_outcome(self.worker_id, self.status, False)
            if self.observer is not None:
                usage = self.observer.end()
                if self.observer.first_token_s is not None:
                    TTFT_SECONDS.labels(model).observe(self.observer.first_token_s)
                itl = ITL_SECONDS.labels(model)
                for gap in self.observer.gaps:
                    itl.observe(gap)
                if usage.completion_tokens:
                    OUTPUT_TOKENS.labels(model).inc(usage.completion_tokens)
                if usage.prompt_tokens:
                    PROMPT_TOKENS.labels(model).inc(usage.prompt_tokens)
            E2E_SECONDS.labels(model).observe(now - self.started)
            self._count(self.status or 0)
        finally:
            self._release()

    def _fail(self, error: GatewayError) -> pb.ProcessingResponse:
        """An immediate error answer; the exchange ends here."""
        self.finished = True
        self._release()
        self._count(error.status)
        logger.debug(
            "request %s refused: %d %s", self.request_id, error.status, error.message
        )
        return responses.error_response(
            error, self.request_id, dialect=self.error_dialect
        )

    def close(self) -> None:
        """The gRPC stream is over. Without a finished response, an abort."""
        self.abort()

    def abort(self) -> None:
        """The stream that watched the response is over: unless the request
        has finished, it settles as an abort."""
        if self.finished:
            return
        self.finished = True
        try:
            if self.worker_id is not None:
                ABORTS.labels(self.model_label).inc()
                if self.status is None:
                    # Routed, and no response ever came back: count a reset.
                    self.ctx.breaker.record_outcome(self.worker_id, None, True)
                self._count(self.status or 0, aborted=True)
        finally:
            self._release()

    def settle_unobserved(self) -> None:
        """No observer reported on this routed request: release its charge and
        count it as ``unobserved`` (its outcome is unknown, so neither an
        abort nor a breaker outcome is recorded)."""
        if self.finished:
            return
        self.finished = True
        try:
            self._count(0, label=UNOBSERVED)
        finally:
            self._release()

    def _count(
        self, status: int, *, aborted: bool = False, label: str | None = None
    ) -> None:
        if label is None:
            label = "aborted" if aborted else bounded_status(status)
        worker = self.worker_id or NO_WORKER
        REQUESTS.labels(self.model_label, worker, label, self.policy_name).inc()
        if self.ctx.access_log:
            access_logger.info(
                "%s %s %s model=%s worker=%s status=%s reason=%s tokens=%d %.1fms",
                self.request_id or "-",
                self.method,
                self.path,
                self.model_label,
                worker,
                label,
                self.reason or "-",
                self.tokens,
                (time.monotonic() - self.started) * 1000,
            )
