"""One simulated worker: an aiohttp server speaking vLLM's or SGLang's HTTP API."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from corral.errors import GatewayError, InvalidRequest, ModelNotFound
from corral.simulator import anthropic, api, rerank, responses_api, tokens
from corral.simulator.config import FaultConfig, SimConfig
from corral.simulator.engine import Engine
from corral.simulator.metrics import CONTENT_TYPE, SimMetrics
from corral.simulator.protocol import error_body, model_card, now
from corral.simulator.sampler import Vocabulary, vocabulary
from corral.tokenizer import ModelTokenizer, load_tokenizer

logger = logging.getLogger(__name__)

WORKER_HEADER = "x-corral-sim-worker"
SIM_VERSIONS = {"vllm": "0.11.0", "sglang": "0.5.4"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InjectedError(GatewayError):
    """An error answer chosen by fault injection."""

    def __init__(self, status: int) -> None:
        super().__init__(f"simulated failure (status {status})", code=str(status))
        self.status = status


class SimWorker:
    """A simulated engine worker serving one model on one port.

    ``start()`` loads the tokenizer and binds (port 0 picks a free port, then
    ``port`` and ``url`` tell the real one); ``stop()`` closes the server and
    ends every open request. ``owns_process`` allows the exit fault, which
    ends the whole process; it is refused when workers share a process.
    """

    def __init__(self, config: SimConfig, *, owns_process: bool = False) -> None:
        config.validate()
        self.config = config
        self.faults: FaultConfig = config.faults
        self.owns_process = owns_process
        self.port = config.port
        self.metrics = SimMetrics(config)
        self.engine = Engine(config, self.metrics)
        self.tokenizer: ModelTokenizer | None = None
        self.vocab: Vocabulary | None = None
        self.created = now()
        self._runner: web.AppRunner | None = None
        self._started_at = 0.0
        self._requests = 0
        self._rng = random.Random(f"faults:{config.model}:{config.port}")

    def __repr__(self) -> str:
        cfg = self.config
        return f"<SimWorker {self.id} {cfg.engine} {cfg.model} {self.engine}>"

    @property
    def id(self) -> str:
        return self.config.worker_id or f"{self.config.host}:{self.port}"

    @property
    def url(self) -> str:
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Load the tokenizer, then bind and serve."""
        self.tokenizer = await asyncio.to_thread(load_tokenizer, self.config.tokenizer)
        self.vocab = await asyncio.to_thread(vocabulary, self.tokenizer)
        # handler_cancellation: a client that goes away cancels its handler, which
        # is what frees its engine slot at once.
        self._runner = web.AppRunner(
            self._build_app(), handler_cancellation=True, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        address = self._runner.addresses[0]
        self.port = int(address[1])
        self._started_at = time.monotonic()
        logger.info("worker %s serving %s on %s", self.id, self.config.model, self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- application -----------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 << 20)
        app.on_response_prepare.append(self._tag_response)
        routes = [
            web.post("/v1/chat/completions", self._guarded(api.chat_completions)),
            web.post("/v1/completions", self._guarded(api.completions)),
            web.post("/v1/embeddings", self._guarded(api.embeddings)),
            # vLLM serves these; the SGLang simulator answers them too, in the
            # same shapes, so that a pool of either kind serves every endpoint
            # the gateway routes.
            web.post("/v1/responses", self._guarded(responses_api.responses)),
            web.post(anthropic.PATH, self._guarded(anthropic.messages)),
            web.post("/rerank", self._guarded(rerank.rerank)),
            web.post("/v1/rerank", self._guarded(rerank.rerank)),
            web.post("/tokenize", self._plain(tokens.tokenize)),
            web.post("/detokenize", self._plain(tokens.detokenize)),
            web.get("/v1/models", self._models),
            web.get("/health", self._health),
            web.get("/metrics", self._metrics),
            web.get("/sim/faults", self._get_faults),
            web.post("/sim/faults", self._set_faults),
            web.post("/sim/reset-cache", self._reset_cache),
            web.get("/sim/state", self._state),
        ]
        if self.config.engine == "vllm":
            routes.append(web.get("/version", self._version))
        else:
            routes += [
                web.post("/generate", self._guarded(api.generate)),
                web.get("/health_generate", self._health),
                web.get("/get_model_info", self._model_info),
                web.get("/model_info", self._model_info),
                web.get("/get_server_info", self._server_info),
                web.get("/server_info", self._server_info),
            ]
        app.add_routes(routes)
        return app

    async def _tag_response(self, _: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = self.id

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        # The one place where errors become answers, in the engine's format
        # (Anthropic's envelope on the Anthropic path).
        render = _anthropic_error if request.path == anthropic.PATH else _error
        try:
            return await handler(request)
        except GatewayError as exc:
            return render(exc.status, exc.message, exc.param)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return render(exc.status, exc.reason)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            logger.exception("worker %s: unexpected error on %s", self.id, request.path)
            return render(500, "internal error in the simulator")

    def _guarded(
        self,
        handler: Callable[
            [SimWorker, web.Request, dict[str, Any]], Awaitable[web.StreamResponse]
        ],
    ) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            body = await read_json(request)
            await self._inject_faults()
            return await handler(self, request, body)

        return guarded

    def _plain(
        self,
        handler: Callable[
            [SimWorker, web.Request, dict[str, Any]], Awaitable[web.StreamResponse]
        ],
    ) -> Handler:
        # Tokenizer endpoints do no generation, so generation faults skip them.
        async def plain(request: web.Request) -> web.StreamResponse:
            return await handler(self, request, await read_json(request))

        return plain

    async def _inject_faults(self) -> None:
        self._requests += 1
        count, faults = self._requests, self.faults
        if faults.exit_after is not None and count >= faults.exit_after:
            if self.owns_process:
                logger.error("worker %s: exiting on request %d (fault)", self.id, count)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            logger.warning(
                "worker %s: exit fault ignored, workers share this process", self.id
            )
        if faults.hang:
            # Held until the client leaves or the worker stops (both cancel).
            await asyncio.Event().wait()
        if faults.fail_after is not None and count > faults.fail_after:
            raise InjectedError(faults.error_status)
        if faults.error_rate and self._rng.random() < faults.error_rate:
            raise InjectedError(faults.error_status)

    def check_model(self, body: dict[str, Any]) -> str:
        """The served model name; a request may leave ``model`` out."""
        model = body.get("model")
        if model is None:
            return self.config.model
        if not isinstance(model, str):
            raise InvalidRequest("'model' must be a string", param="model")
        if model != self.config.model:
            raise ModelNotFound(model)
        return model

    # -- plain endpoints ---------------------------------------------------------

    async def _health(self, _: web.Request) -> web.Response:
        if time.monotonic() - self._started_at < self.faults.slow_start_s:
            return web.Response(status=503, text="starting")
        return web.Response(status=200)

    async def _models(self, _: web.Request) -> web.Response:
        card = model_card(
            self.config.model,
            self.config.engine,
            self.config.max_model_len,
            self.created,
        )
        return web.json_response({"object": "list", "data": [card]})

    async def _version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": SIM_VERSIONS["vllm"]})

    async def _model_info(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "model_path": self.config.model,
                "tokenizer_path": self.config.tokenizer,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
            }
        )

    async def _server_info(self, _: web.Request) -> web.Response:
        cfg = self.config
        return web.json_response(
            {
                "model_path": cfg.model,
                "served_model_name": cfg.model,
                "context_length": cfg.max_model_len,
                "max_total_num_tokens": cfg.num_blocks * cfg.block_size,
                "max_running_requests": cfg.max_num_seqs,
                "page_size": cfg.block_size,
                "version": SIM_VERSIONS["sglang"],
            }
        )

    async def _metrics(self, _: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.exposition())
        response.headers["content-type"] = CONTENT_TYPE
        return response

    async def _get_faults(self, _: web.Request) -> web.Response:
        return web.json_response(self.faults.to_json())

    async def _set_faults(self, request: web.Request) -> web.Response:
        self.faults.update(await read_json(request))
        logger.info("worker %s: faults now %s", self.id, self.faults)
        return web.json_response(self.faults.to_json())

    async def _reset_cache(self, _: web.Request) -> web.Response:
        return web.json_response({"dropped_blocks": self.engine.reset_cache()})

    async def _state(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "running": self.engine.running,
                "waiting": self.engine.waiting,
                "kv_cache_usage": self.engine.kv.usage,
                "requests": self._requests,
            }
        )


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or ``InvalidRequest``."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.json_response(error_body(status, message, param), status=status)


def _anthropic_error(
    status: int, message: str, param: str | None = None
) -> web.Response:
    del param  # Anthropic's envelope has no parameter field
    return web.json_response(anthropic.error_body(status, message), status=status)
