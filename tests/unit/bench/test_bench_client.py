"""The load generator against a real simulated worker on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bench.client import run_workload
from bench.workloads import Session, TextMaker, Workload, build_workloads
from corral.simulator.config import SimConfig
from corral.simulator.server import SimWorker
from corral.tokenizer import load_tokenizer


@pytest.fixture
async def worker(tinyllama_path) -> AsyncIterator[SimWorker]:
    # Port 0: the system picks a free port on 127.0.0.1. Time runs 20x faster.
    sim = SimWorker(SimConfig(model="m", port=0, tokenizer=str(tinyllama_path),
                              time_scale=0.05))
    await sim.start()
    yield sim
    await sim.stop()


async def test_streamed_turns_are_timed_and_history_grows(worker):
    workload = Workload(
        name="t", description="", concurrency=2, max_tokens=5, keep_history=True,
        sessions=(Session(("one", "two", "three"), system="sys"), Session(("solo",))),
    )
    run = await run_workload(worker.url, "m", workload)
    assert run.unsent == 0 and not run.timed_out
    assert all(r.ok for r in run.results), [r.error for r in run.results]
    for result in run.results:
        assert result.output_tokens == 5
        assert 0 < result.ttft_s <= result.e2e_s
        assert len(result.itl_s) == 4
    # Each later turn resends the earlier turns and answers, so its prompt is
    # longer than the one before it.
    turns = sorted((r for r in run.results if r.session == 0), key=lambda r: r.turn)
    prompts = [r.prompt_tokens for r in turns]
    assert prompts == sorted(prompts) and len(set(prompts)) == 3


async def test_unstreamed_request_reports_e2e_as_ttft(worker):
    workload = Workload(name="s", description="", concurrency=1, max_tokens=1,
                        stream=False, sessions=(Session(("hi",)),))
    run = await run_workload(worker.url, "m", workload)
    (result,) = run.results
    assert result.ok and result.ttft_s == result.e2e_s and result.output_tokens == 1


async def test_errors_are_counted_not_raised(worker):
    workload = Workload(name="e", description="", concurrency=1, max_tokens=1,
                        sessions=(Session(("hi",)),))
    run = await run_workload(worker.url, "no-such-model", workload)
    (result,) = run.results
    assert not result.ok and result.status == 404


async def test_time_limit_stops_the_run_and_counts_the_rest_as_unsent(worker):
    workload = Workload(name="slow", description="", concurrency=1, max_tokens=200,
                        time_limit_s=0.3, sessions=tuple(Session(("hi",))
                                                         for _ in range(50)))
    run = await run_workload(worker.url, "m", workload)
    assert run.timed_out
    assert run.unsent >= 45


def test_workloads_are_identical_for_the_same_seed(tinyllama_path):
    tokenizer = load_tokenizer(str(tinyllama_path))
    first = build_workloads(tokenizer, quick=True)
    second = build_workloads(tokenizer, quick=True)
    assert [w.sessions for w in first] == [w.sessions for w in second]
    names = [w.name for w in first]
    assert names == ["shared_prefix", "multi_turn", "short", "long"]


def test_text_maker_cuts_to_the_requested_token_count(tinyllama_path):
    tokenizer = load_tokenizer(str(tinyllama_path))
    text = TextMaker(tokenizer).tokens(500)
    count = len(tokenizer.encode(text, add_special_tokens=False))
    # Re-tokenizing at the cut may merge or split one piece.
    assert abs(count - 500) <= 2
