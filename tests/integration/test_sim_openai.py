"""The simulator speaks the engines' OpenAI API as the official client sees it."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from tokenizers import Tokenizer

from corral.simulator import WORKER_HEADER
from tests.integration._sim_support import client, running, scrape


async def test_chat_completion_has_openai_shape_and_usage():
    async with running(model="m1") as worker:
        raw = await client(worker).chat.completions.with_raw_response.create(
            model="m1",
            messages=[{"role": "user", "content": "hello there"}],
            max_tokens=5,
        )
        reply = raw.parse()
        assert raw.headers[WORKER_HEADER] == worker.id == f"127.0.0.1:{worker.port}"
        assert reply.id.startswith("chatcmpl-")
        assert reply.object == "chat.completion"
        assert reply.model == "m1"
        assert [c.index for c in reply.choices] == [0]
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 5
        rendered = worker.tokenizer.render_chat(
            [{"role": "user", "content": "hello there"}]
        )
        expected = len(worker.tokenizer.encode(rendered, add_special_tokens=False))
        assert reply.usage.prompt_tokens == expected
        assert reply.usage.total_tokens == expected + 5


async def test_streamed_chat_with_n_and_include_usage():
    async with running() as worker:
        stream = await client(worker).chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            n=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        texts = {0: "", 1: "", 2: ""}
        finishes = {}
        chunks = [chunk async for chunk in stream]
        for chunk in chunks[:-1]:
            assert chunk.object == "chat.completion.chunk"
            assert len(chunk.choices) == 1
            choice = chunk.choices[0]
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
        assert finishes == {0: "length", 1: "length", 2: "length"}
        assert len({t for t in texts.values()}) == 3  # choices differ
        last = chunks[-1]
        assert last.choices == []
        assert last.usage.completion_tokens == 12
        assert len({c.id for c in chunks}) == 1


async def test_stream_ends_with_done_event():
    async with running() as worker, aiohttp.ClientSession() as session:
        body = {"model": "sim-model", "prompt": "x", "max_tokens": 2, "stream": True}
        async with session.post(f"{worker.url}/v1/completions", json=body) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            text = await resp.text()
    events = text.split("\n\n")
    assert events[-2] == "data: [DONE]" and events[-1] == ""
    assert all(e.startswith("data: ") for e in events[:-1])


async def test_output_is_deterministic_for_seed_and_prompt():
    async with running() as worker:
        api = client(worker)

        async def ask(content: str, seed: int | None) -> str:
            reply = await api.chat.completions.create(
                model="sim-model",
                messages=[{"role": "user", "content": content}],
                max_tokens=8,
                seed=seed,
            )
            return reply.choices[0].message.content

        assert await ask("a", 7) == await ask("b", 7)
        assert await ask("a", 7) != await ask("a", 8)
        assert await ask("same prompt", None) == await ask("same prompt", None)
        assert await ask("same prompt", None) != await ask("other prompt", None)


async def test_unbounded_answer_finishes_with_stop():
    async with running(min_output_tokens=3, max_output_tokens=6) as worker:
        reply = await client(worker).chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].finish_reason == "stop"
        assert 3 <= reply.usage.completion_tokens <= 6


async def test_stop_string_cuts_the_text():
    async with running() as worker:
        api = client(worker)
        full = await api.completions.create(
            model="sim-model", prompt="p", seed=1, max_tokens=20
        )
        text = full.choices[0].text
        stop = text.split()[3]
        cut = await api.completions.create(
            model="sim-model", prompt="p", seed=1, max_tokens=20, stop=[" " + stop]
        )
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].text == text[: text.index(" " + stop)]
        streamed = await api.completions.create(
            model="sim-model",
            prompt="p",
            seed=1,
            max_tokens=20,
            stop=[" " + stop],
            stream=True,
        )
        pieces = [c.choices[0].text async for c in streamed]
        assert "".join(pieces) == cut.choices[0].text


@pytest.mark.parametrize(
    ("prompt", "choices"),
    [
        ("one string", 2),
        (["first", "second"], 4),
        ([5, 6, 7], 2),
        ([[5, 6], [7, 8, 9]], 4),
    ],
    ids=["string", "strings", "token-ids", "token-id-lists"],
)
async def test_completions_accept_every_prompt_form(prompt, choices):
    async with running() as worker:
        reply = await client(worker).completions.create(
            model="sim-model", prompt=prompt, n=2, max_tokens=3
        )
        assert reply.object == "text_completion"
        assert sorted(c.index for c in reply.choices) == list(range(choices))
        if prompt == [[5, 6], [7, 8, 9]]:
            assert reply.usage.prompt_tokens == 5
        if prompt == [5, 6, 7]:
            assert reply.usage.prompt_tokens == 3
        assert reply.usage.completion_tokens == 3 * choices


async def test_content_parts_are_flattened_before_rendering():
    async with running() as worker:
        api = client(worker)
        parts = await api.chat.completions.create(
            model="sim-model",
            max_tokens=1,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "alpha"},
                        {"type": "text", "text": "beta"},
                    ],
                }
            ],
        )
        plain = await api.chat.completions.create(
            model="sim-model",
            max_tokens=1,
            messages=[{"role": "user", "content": "alpha\nbeta"}],
        )
        assert parts.usage.prompt_tokens == plain.usage.prompt_tokens


async def test_tinyllama_tokenizer_counts_prompt_tokens(tinyllama_path):
    async with running(tokenizer=str(tinyllama_path)) as worker:
        reply = await client(worker).completions.create(
            model="sim-model", prompt="The quick brown fox", max_tokens=6, seed=3
        )
        # Counted as the real tokenizer counts it, <s> included.
        reference = Tokenizer.from_file(str(tinyllama_path / "tokenizer.json"))
        ids = reference.encode("The quick brown fox", add_special_tokens=True).ids
        assert ids[0] == reference.token_to_id("<s>")
        assert reply.usage.prompt_tokens == len(ids)
        text = reply.choices[0].text
        text.encode("utf-8")
        assert "\ufffd" not in text and len(text.split()) >= 1


async def test_models_lists_the_model_for_smg():
    async with running(model="m2", engine="sglang") as worker:
        models = await client(worker).models.list()
        assert [m.id for m in models.data] == ["m2"]
        assert models.data[0].owned_by == "sglang"
        assert models.data[0].model_extra["max_model_len"] == 8192


async def test_info_endpoints_follow_the_flavour():
    async with (
        running() as vllm,
        running(engine="sglang") as sglang,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{vllm.url}/version") as resp:
            assert resp.status == 200 and "version" in await resp.json()
        async with session.get(f"{vllm.url}/get_server_info") as resp:
            assert resp.status == 404
        for path in (
            "/get_model_info",
            "/model_info",
            "/get_server_info",
            "/server_info",
            "/health",
        ):
            async with session.get(f"{sglang.url}{path}") as resp:
                assert resp.status == 200, path
        async with session.get(f"{sglang.url}/version") as resp:
            assert resp.status == 404


async def test_sglang_generate_native_api():
    async with running(engine="sglang") as worker, aiohttp.ClientSession() as session:
        body = {"text": "hello", "sampling_params": {"max_new_tokens": 4}}
        async with session.post(f"{worker.url}/generate", json=body) as resp:
            answer = await resp.json()
        assert answer["meta_info"]["completion_tokens"] == 4
        assert answer["meta_info"]["finish_reason"] == {"type": "length", "length": 4}
        body = {
            "input_ids": [3, 4, 5],
            "sampling_params": {"max_new_tokens": 3},
            "stream": True,
        }
        async with session.post(f"{worker.url}/generate", json=body) as resp:
            text = await resp.text()
        assert text.endswith("data: [DONE]\n\n")
        assert text.count("data: {") == 3


async def test_embeddings_are_deterministic_unit_vectors():
    async with running() as worker:
        api = client(worker)
        a = await api.embeddings.create(model="sim-model", input=["x", "y"])
        b = await api.embeddings.create(model="sim-model", input="x")
        assert [d.index for d in a.data] == [0, 1]
        assert a.data[0].embedding == b.data[0].embedding
        assert abs(sum(v * v for v in a.data[0].embedding) - 1.0) < 1e-9


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
async def test_metric_names_present(engine):
    async with running(engine=engine) as worker:
        await client(worker).completions.create(
            model="sim-model", prompt="hello", max_tokens=3
        )
        samples = await scrape(worker)
    if engine == "vllm":
        names = [
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:prefix_cache_queries_total",
            "vllm:prefix_cache_hits_total",
            "vllm:cache_config_info",
            "vllm:time_to_first_token_seconds_count",
            "vllm:inter_token_latency_seconds_count",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:request_success_total",
        ]
        assert samples["vllm:generation_tokens_total"] == 3
        assert (
            samples[
                'vllm:cache_config_info{block_size="16",cache_dtype="auto",'
                'enable_prefix_caching="True",num_gpu_blocks="31250"}'
            ]
            == 1
        )
        assert (
            samples['vllm:num_requests_running{engine="0",model_name="sim-model"}'] == 0
        )
    else:
        names = [
            "sglang:num_running_reqs",
            "sglang:num_queue_reqs",
            "sglang:token_usage",
            "sglang:cache_hit_rate",
            "sglang:time_to_first_token_seconds_count",
            "sglang:inter_token_latency_seconds_count",
            "sglang:prompt_tokens_total",
            "sglang:generation_tokens_total",
            "sglang:cache_config_info",
        ]
        assert samples["sglang:generation_tokens_total"] == 3
    for name in names:
        assert name in samples, name
    ttft = f"{engine}:time_to_first_token_seconds_count"
    assert samples[ttft] == 1


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/chat/completions", b"{not json", 400),
        ("/v1/chat/completions", b"[1, 2]", 400),
        ("/v1/chat/completions", b'{"model": "sim-model"}', 400),
        ("/v1/chat/completions", b'{"model": "sim-model", "messages": "hi"}', 400),
        (
            "/v1/chat/completions",
            b'{"model": "sim-model", "messages": [{"role": "user", "content": "x"}],'
            b' "max_tokens": "ten"}',
            400,
        ),
        (
            "/v1/chat/completions",
            b'{"model": "sim-model", "messages": [{"role": "user", "content": "x"}],'
            b' "n": 0}',
            400,
        ),
        (
            "/v1/chat/completions",
            b'{"model": "other", "messages": [{"role": "user", "content": "x"}]}',
            404,
        ),
        ("/v1/completions", b'{"model": "sim-model", "prompt": [1, "a"]}', 400),
        (
            "/v1/completions",
            b'{"model": "sim-model", "prompt": "x", "max_tokens": 100000}',
            400,
        ),
        ("/v1/completions", b'{"model": 5, "prompt": "x"}', 400),
        ("/v1/nothing-here", b"{}", 404),
    ],
    ids=[
        "malformed",
        "not-object",
        "no-messages",
        "messages-type",
        "max-tokens-type",
        "n-zero",
        "unknown-model",
        "prompt-mixed",
        "too-long",
        "model-type",
        "unknown-path",
    ],
)
async def test_bad_requests_get_engine_error_json(path, body, status):
    async with (
        running() as worker,
        aiohttp.ClientSession() as session,
        session.post(
            f"{worker.url}{path}",
            data=body,
            headers={"content-type": "application/json"},
        ) as resp,
    ):
        assert resp.status == status
        error = (await resp.json())["error"]
        assert resp.headers[WORKER_HEADER] == worker.id
    assert error["code"] == status
    assert error["type"] == {400: "BadRequestError", 404: "NotFoundError"}[status]
    assert isinstance(error["message"], str) and error["message"]


async def test_official_client_raises_typed_errors():
    async with running() as worker:
        with pytest.raises(openai.NotFoundError):
            await client(worker).chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.BadRequestError):
            await client(worker).chat.completions.create(model="sim-model", messages=[])
