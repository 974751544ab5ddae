"""What one request costs and how it is counted: the in-flight charge on a
worker, the admission slot, and the metrics and access log line at its end.

``RequestLedger`` is the base of ``RequestStream``: the stream speaks the
protocol, the ledger keeps the books. Its contract: the charge on a worker and
the admission slot are released exactly once, whether the response ended
normally (``_finish``), was refused (``_fail``) or the gRPC stream stopped
first (``close``, an abort).
"""

from __future__ import annotations

import logging
import time

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from corral.errors import GatewayError
from corral.extproc import responses
from corral.extproc.context import ServerContext
from corral.extproc.hooks import Release
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

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("corral.access")

NO_WORKER = "none"
UNKNOWN_MODEL = "unknown"


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
        release, self._release_admission = self._release_admission, None
        if release is not None:
            try:
                release()
            except Exception:
                logger.exception("admission release failed")

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

    def _count(self, status: int, *, aborted: bool = False) -> None:
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
