"""ext_proc messages per second in one process over loopback gRPC.

Client and server share one event loop; each request is the Envoy sequence
request headers, a 4 KB chat body, response headers, one SSE chunk, end of
stream (5 messages). Runs a bounded number of requests per style, at a fixed
concurrency, and prints the median of several rounds:

    python bench/extproc_bench.py [--requests 2000] [--concurrency 16] [--rounds 3]

Styles: ``read_write`` (the server's ``Process``) and ``generator`` (the same
per-request state behind an async-generator ``Process``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from corral.config.settings import parse_settings
from corral.extproc import ExtProcServer, grpc_server_options
from tests.integration.extproc_harness import (
    InOrderPolicy,
    body_message,
    chat_headers,
    headers_message,
    make_registry,
    response_body_message,
    response_headers_message,
)


class GeneratorServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, server: ExtProcServer) -> None:
        self._server = server

    async def Process(self, request_iterator: Any, context: Any) -> Any:
        stream = self._server.open_stream()
        try:
            async for request in request_iterator:
                yield await stream.handle(request)
        finally:
            stream.close()


def _messages() -> list[Any]:
    content = "lorem ipsum dolor sit amet " * 150
    body = json.dumps(
        {
            "model": "m1",
            "stream": True,
            "messages": [{"role": "user", "content": content[:4000]}],
        }
    )
    return [
        headers_message(chat_headers(length=len(body))),
        body_message(body.encode()),
        response_headers_message(
            200, upstream="127.0.0.1:9001", content_type="text/event-stream"
        ),
        response_body_message(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'),
        response_body_message(b"data: [DONE]\n\n", end_of_stream=True),
    ]


async def _run(style: str, requests: int, concurrency: int) -> float:
    settings = parse_settings({"models": [{"name": "m1"}]})
    registry = make_registry([9001, 9002])
    policy = InOrderPolicy()
    extproc = ExtProcServer(
        registry, settings, policy_for=lambda _m: policy, tokenizer_for=lambda _m: None
    )
    options = grpc_server_options(settings)
    server = grpc.aio.server(options=options)
    if style == "read_write":
        extproc.add_to_server(server)
    else:
        pb_grpc.add_ExternalProcessorServicer_to_server(
            GeneratorServicer(extproc), server
        )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    stub = pb_grpc.ExternalProcessorStub(channel)
    messages = _messages()
    left = requests

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            call = stub.Process()
            for message in messages:
                await call.write(message)
                await call.read()
            await call.done_writing()
            await call.read()

    started = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(client() for _ in range(concurrency))), timeout=120
    )
    elapsed = time.perf_counter() - started
    await channel.close()
    await extproc.close()
    await server.stop(None)
    return requests * len(messages) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for style in ("read_write", "generator"):
        rates = [
            asyncio.run(_run(style, args.requests, args.concurrency))
            for _ in range(args.rounds)
        ]
        print(
            f"{style:10s} median {statistics.median(rates):8.0f} msg/s "
            f"({statistics.median(rates) / 5:6.0f} req/s) "
            f"rounds={[round(r) for r in rates]}"
        )


if __name__ == "__main__":
    main()
