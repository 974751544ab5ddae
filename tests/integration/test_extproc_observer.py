"""The picker's stream and the observer's stream of one request, driven over real
gRPC on 127.0.0.1 as Envoy drives them with Corral's own bootstrap: the picker
decides (its response phases are off), the observer attaches by ticket and
reports the response without ever being answered."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from corral.observability.metrics import REGISTRY
from tests.integration.extproc_harness import (
    Harness,
    body_message,
    chat_body,
    chat_headers,
    headers_message,
    make_registry,
    observed,
    picker_first,
    response_body_message,
    response_headers_message,
    ticket_of,
)

pytestmark = pytest.mark.timeout(30)

W1, W2 = "127.0.0.1:9001", "127.0.0.1:9002"
SSE = "text/event-stream"
USAGE_END = (
    b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":%d}}\n\n'
    b"data: [DONE]\n\n"
)


def _metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _requests(worker: str, status: str) -> float:
    return _metric(
        "corral_requests_total",
        {"model": "m1", "worker": worker, "status": status, "policy": "in_order"},
    )


async def _poll(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


async def _decide(h: Harness, request_id: str = "req-1", **body: object):
    """A picker stream up to its decision; returns (call, ticket)."""
    call = h.open()
    await call.write(picker_first(headers_message(chat_headers(**{
        "x-request-id": request_id}))))
    await call.read()
    await call.write(body_message(chat_body(**body)))
    decision = await call.read()
    return call, ticket_of(decision)


async def _end_picker(call) -> None:
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF


def _observer_messages(
    ticket: str, *, request_id: str = "req-1", upstream: str = W1,
    chunks: tuple[bytes, ...] = (), end: bool = True, status: int = 200,
):
    messages = [
        observed(headers_message(chat_headers(**{"x-request-id": request_id})), ticket),
        observed(response_headers_message(status, upstream=upstream, content_type=SSE),
                 ticket),
    ]
    messages += [observed(response_body_message(c), ticket) for c in chunks]
    if end:
        last = response_body_message(b"", end_of_stream=True)
        messages.append(observed(last, ticket))
    return messages


async def test_picker_decision_carries_a_ticket_and_no_response_phase_is_needed():
    registry = make_registry([9001, 9002])
    async with Harness(registry) as h:
        call, ticket = await _decide(h)
        assert ticket
        assert registry.load(W1).requests == 1
        assert len(h.extproc.context.meetings) == 1
        await h.observe(_observer_messages(ticket, chunks=(USAGE_END % 4,)))
        assert registry.load(W1).requests == 0
        await _end_picker(call)
    assert registry.load(W1).processed == 1
    assert len(h.extproc.context.meetings) == 0


async def test_complete_response_seen_by_observer_settles_usage_and_breaker_once():
    registry = make_registry([9001, 9002])
    before = _metric("corral_output_tokens_total", {"model": "m1"})
    ok = _requests(W1, "200")
    async with Harness(registry) as h:
        call, ticket = await _decide(h, stream=True)
        # Envoy ends the picker's stream with the HTTP stream; the observer's
        # messages may still be on their way: the charge must wait for them.
        await _end_picker(call)
        await asyncio.sleep(0.05)
        assert registry.load(W1).requests == 1
        event = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
        await h.observe(_observer_messages(ticket, chunks=(event, USAGE_END % 7)))
    assert registry.load(W1).requests == 0
    assert registry.load(W1).processed == 1
    assert _metric("corral_output_tokens_total", {"model": "m1"}) - before == 7
    assert _requests(W1, "200") - ok == 1
    assert h.breaker.outcomes == [(W1, 200, False)]


async def test_observer_stream_ending_without_end_of_stream_is_an_abort():
    registry = make_registry([9001])
    aborts = _metric("corral_requests_aborted_total", {"model": "m1"})
    async with Harness(registry) as h:
        call, ticket = await _decide(h, stream=True)
        await _end_picker(call)
        await h.observe(
            _observer_messages(ticket, chunks=(b"data: {}\n\n",), end=False)
        )
        await _poll(lambda: registry.load(W1).requests == 0)
    assert _metric("corral_requests_aborted_total", {"model": "m1"}) - aborts == 1
    assert registry.load(W1).processed == 1
    # The worker answered 200; a client that left is not the worker's fault.
    assert h.breaker.outcomes == []


async def test_observer_gone_before_response_headers_counts_a_reset():
    registry = make_registry([9001])
    async with Harness(registry) as h:
        call, ticket = await _decide(h)
        await h.observe(_observer_messages(ticket)[:1])
        await _poll(lambda: registry.load(W1).requests == 0)
        await _end_picker(call)
    assert h.breaker.outcomes == [(W1, None, True)]


async def test_without_an_observer_the_charge_is_released_after_the_grace():
    registry = make_registry([9001])
    unobserved = _requests(W1, "unobserved")
    async with Harness(registry, observer_grace_s=0.3) as h:
        call, _ticket = await _decide(h)
        await _end_picker(call)
        began = time.monotonic()
        await asyncio.sleep(0.1)
        assert registry.load(W1).requests == 1  # still inside the grace
        await _poll(lambda: registry.load(W1).requests == 0)
        assert time.monotonic() - began >= 0.25
        assert len(h.extproc.context.meetings) == 0
        # An observer that comes after the grace finds nothing to settle.
        await h.observe(_observer_messages(_ticket, chunks=(USAGE_END % 3,)))
    assert _requests(W1, "unobserved") - unobserved == 1
    assert registry.load(W1).processed == 1
    assert registry.load(W1).requests == 0
    assert h.breaker.outcomes == []


async def test_picker_stream_cancelled_before_any_observer_still_releases():
    registry = make_registry([9001])
    async with Harness(registry, observer_grace_s=0.2) as h:
        call, _ticket = await _decide(h)
        call.cancel()
        await _poll(lambda: registry.load(W1).requests == 0)
    assert registry.load(W1).processed == 1


async def test_same_client_request_id_twice_at_once_keeps_each_request_books():
    registry = make_registry([9001, 9002])
    async with Harness(registry) as h:
        call_a, ticket_a = await _decide(h, "dup", stream=True)
        call_b, ticket_b = await _decide(h, "dup", stream=True)
        assert ticket_a != ticket_b
        assert registry.load(W1).requests == 2
        # B's observer first: Envoy retried B onto the fallback; B completes.
        await h.observe(
            _observer_messages(ticket_b, request_id="dup", upstream=W2,
                               chunks=(USAGE_END % 9,))
        )
        assert registry.load(W1).requests == 1
        assert registry.load(W2).requests == 0
        assert registry.load(W2).processed == 1
        # A forged observer (right id, no ticket, or a ticket already used) and
        # a second observer with B's ticket change nothing.
        no_ticket = observed(headers_message(chat_headers(**{"x-request-id": "dup"})))
        await h.observe([no_ticket, *_observer_messages(ticket_a)[1:]])
        await h.observe(_observer_messages(ticket_b, request_id="dup"))
        assert registry.load(W1).requests == 1
        # A's own observer: its client left mid-stream.
        await h.observe(_observer_messages(ticket_a, request_id="dup",
                                           chunks=(b"data: {}\n\n",), end=False))
        await _poll(lambda: registry.load(W1).requests == 0)
        await _end_picker(call_a)
        await _end_picker(call_b)
    assert registry.load(W1).processed == 1
    assert registry.load(W2).processed == 1
    assert h.breaker.outcomes == [(W1, None, True), (W2, 200, False)]


async def test_a_ticket_only_meets_its_own_request_id():
    registry = make_registry([9001])
    async with Harness(registry, observer_grace_s=0.2) as h:
        call, ticket = await _decide(h, "mine")
        await h.observe(_observer_messages(ticket, request_id="theirs"))
        assert registry.load(W1).requests == 1
        await _end_picker(call)
        await _poll(lambda: registry.load(W1).requests == 0)


async def test_retry_onto_a_fallback_moves_the_charge_while_streaming():
    registry = make_registry([9001, 9002])
    async with Harness(registry) as h:
        call, ticket = await _decide(h, stream=True)
        observer = h.open()
        for message in _observer_messages(ticket, upstream=W2, end=False):
            await observer.write(message)
        await _poll(lambda: registry.load(W2).requests == 1)
        assert registry.load(W1).requests == 0
        await observer.write(observed(response_body_message(
            USAGE_END % 2, end_of_stream=True), ticket))
        await _poll(lambda: registry.load(W2).requests == 0)
        await observer.done_writing()
        assert await observer.read() is grpc.aio.EOF
        await _end_picker(call)
    assert registry.load(W2).processed == 1
    assert registry.load(W1).processed == 0
    assert h.breaker.outcomes == [(W1, None, True), (W2, 200, False)]


async def test_observer_streams_of_unrouted_requests_are_ignored():
    registry = make_registry([9001])
    async with Harness(registry) as h:
        # GET /v1/models is answered by the picker; nothing waits for an observer.
        call = h.open()
        await call.write(picker_first(headers_message(
            {":method": "GET", ":path": "/v1/models", "x-request-id": "m"},
            end_of_stream=True)))
        answer = await call.read()
        assert answer.immediate_response.status.code == 200
        await _end_picker(call)
        assert len(h.extproc.context.meetings) == 0
        # A local reply seen by the observer: no ticket, response first.
        await h.observe([
            observed(response_headers_message(503, end_of_stream=False)),
            observed(response_body_message(b"{}", end_of_stream=True)),
        ])
        await h.observe(_observer_messages("no-such-ticket"))
    assert registry.load(W1).requests == 0
    assert registry.load(W1).processed == 0
    assert h.breaker.outcomes == []


async def test_without_protocol_config_the_picker_still_observes_its_own_response():
    registry = make_registry([9001])
    async with Harness(registry) as h:
        answers = await h.exchange([
            headers_message(chat_headers()),
            body_message(chat_body()),
            response_headers_message(200, upstream=W1),
            response_body_message(b"{}", end_of_stream=True),
        ])
        assert not answers[1].dynamic_metadata.fields.get("corral.observe")
        assert len(h.extproc.context.meetings) == 0
    assert registry.load(W1).processed == 1


async def test_a_ticket_is_claimed_by_one_observer_stream_only():
    registry = make_registry([9001])
    async with Harness(registry) as h:
        call, ticket = await _decide(h, stream=True)
        first = h.open()
        for message in _observer_messages(ticket, end=False):
            await first.write(message)
        await _poll(lambda: h.extproc.context.meetings.claimed(("req-1", ticket)))
        # A second stream naming the same ticket reports a finished response.
        await h.observe(_observer_messages(ticket, chunks=(USAGE_END % 1,)))
        assert registry.load(W1).requests == 1
        await first.write(observed(response_body_message(b"", end_of_stream=True),
                                   ticket))
        await _poll(lambda: registry.load(W1).requests == 0)
        await first.done_writing()
        assert await first.read() is grpc.aio.EOF
        await _end_picker(call)
    assert registry.load(W1).processed == 1
