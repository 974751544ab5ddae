"""The ExternalProcessor gRPC service: one ``Process`` stream per HTTP request
and ext_proc filter (the picker's, and in Corral's own bootstrap also the
observer's).

``Process`` uses ``context.read()`` / ``context.write()`` rather than an async
generator: measured in ``bench/extproc_bench.py`` (and in the reference
measurements, envoy.md Q4) it costs less per message, and its ``finally`` runs
deterministically when the stream ends, which is where the request's charge is
released.

Failure policy: a ``GatewayError`` becomes an immediate response (see
``responses.error_response``); anything else is logged with its traceback and
ends the gRPC stream with an error, and Envoy then applies
``failure_mode_allow`` (``settings.envoy.failure_mode_allow``, default true:
the request goes on unrouted, to the pool cluster's fallback load balancer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from corral.config.settings import Settings
from corral.extproc.context import PolicySource, ServerContext, TokenizerSource
from corral.extproc.hooks import Admission, WorkerFilter
from corral.extproc.meeting import OBSERVER_GRACE_S
from corral.extproc.stream import RequestStream
from corral.extproc.watch import ObserverStream
from corral.pool.registry import WorkerRegistry

logger = logging.getLogger(__name__)

GRPC_HEADROOM_BYTES = 1024 * 1024
"""Room above the body limit for the rest of a message (headers, framing)."""


def grpc_server_options(settings: Settings) -> list[tuple[str, Any]]:
    """Channel options for the gRPC server that hosts ext_proc (and ADS).

    A BUFFERED request body arrives as one message, so the receive limit must
    hold ``max_body_bytes`` plus headroom (gRPC's default is 4 MiB).
    FULL_DUPLEX_STREAMED bodies arrive and leave in chunks well below it.
    """
    limit = settings.limits.max_body_bytes + GRPC_HEADROOM_BYTES
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # gRPC sets SO_REUSEPORT by default: a second `corral serve` on the same
        # port would then bind silently and split Envoy's streams between two
        # registries. Refuse instead.
        ("grpc.so_reuseport", 0),
    ]


class ExtProcServer:
    """The routing brain behind Envoy's ext_proc filter.

    ``policy_for`` maps a pool name to its ``RoutingPolicy`` (a callable or a
    mapping); by default policies are built from ``ModelConfig.policy`` with
    ``corral.routing.build_policy``, once per pool. ``tokenizer_for`` maps a
    pool name to a ``ModelTokenizer`` (or ``None``: route on text); by default
    ``ModelConfig.tokenizer`` is loaded. ``breaker`` and ``admission`` are the
    resilience hooks of ``corral.extproc.hooks``; both default to no-ops.
    ``observer_grace_s``: how long a routed request whose picker stream ended
    waits for an observer stream before it is released unobserved
    (``meeting``).

    Construct on the event loop; ``add_to_server`` registers the service and
    starts loading tokenizers in the background (``start()`` awaits it);
    ``close()`` stops the background work.
    """

    def __init__(
        self,
        registry: WorkerRegistry,
        settings: Settings,
        *,
        policy_for: PolicySource | None = None,
        tokenizer_for: TokenizerSource | None = None,
        breaker: WorkerFilter | None = None,
        admission: Admission | None = None,
        observer_grace_s: float = OBSERVER_GRACE_S,
    ) -> None:
        self.settings = settings
        self.context = ServerContext(
            registry,
            settings,
            policy_for=policy_for,
            tokenizer_for=tokenizer_for,
            breaker=breaker,
            admission=admission,
            observer_grace_s=observer_grace_s,
        )
        self._start: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ExtProcServer models={','.join(self.context.models()) or '-'}>"

    async def start(self) -> None:
        """Load the tokenizers (in threads); idempotent."""
        if self._start is None:
            self._start = asyncio.ensure_future(self.context.load_tokenizers())
        await asyncio.shield(self._start)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register the ExternalProcessor service on a grpc.aio server."""
        pb_grpc.add_ExternalProcessorServicer_to_server(_Servicer(self), server)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._start is None:
            self._start = asyncio.ensure_future(self.context.load_tokenizers())

    async def close(self) -> None:
        self.context.close()
        task, self._start = self._start, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def open_stream(self) -> RequestStream:
        """A fresh per-request state; ``Process`` makes one per gRPC stream."""
        return RequestStream(self.context)

    async def process(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Serve one ext_proc stream with ``context.read()`` / ``write()``: a
        picker's (answered message by message) or, when its messages carry
        ``observability_mode``, an observer's (never answered, ``watch``)."""
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if first.observability_mode:
            await self._watch(context, first)
            return
        stream = RequestStream(self.context)
        try:
            request = first
            while True:
                for response in await stream.respond(request):
                    await context.write(response)
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
        except asyncio.CancelledError:
            # Envoy resets the gRPC stream when the HTTP stream ends, sometimes
            # even after a complete response (envoy.md Q5): close() decides from
            # the end-of-stream flag whether this was an abort.
            raise
        except Exception:
            logger.exception("ext_proc stream %s failed", stream.request_id)
            raise
        finally:
            stream.close()

    async def _watch(
        self, context: grpc.aio.ServicerContext[Any, Any], first: pb.ProcessingRequest
    ) -> None:
        watcher = ObserverStream(self.context)
        try:
            request = first
            while True:
                watcher.feed(request)
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("ext_proc observer stream failed")
            raise
        finally:
            watcher.close()


class _Servicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, server: ExtProcServer) -> None:
        self._server = server

    async def Process(
        self,
        request_iterator: Any,
        context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse],
    ) -> None:
        await self._server.process(context)
