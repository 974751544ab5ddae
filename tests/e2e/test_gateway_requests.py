"""Every request shape and every error, through real Envoy and the real control plane."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.stack import Stack, start_stack

pytestmark = pytest.mark.e2e

MODEL = "corral-demo"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    models = [
        {"name": MODEL, "tokenizer": "builtin", "policy": {"name": "cache_aware"}},
        {"name": "idle-model", "tokenizer": "builtin"},
    ]
    running = start_stack(
        tmp_path_factory.mktemp("requests"), workers=2, max_model_len=4_000_000,
        time_scale=0.01, extra={"models": models},
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway, timeout=60) as client:
        yield client


def _error(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def test_four_mib_prompt_is_routed_and_served(stack: Stack, http: httpx.Client) -> None:
    words = "lorem ipsum dolor sit amet " * (4 * MiB // 27)
    body = json.dumps(
        {"model": MODEL, "prompt": words, "max_tokens": 2}
    ).encode()
    assert len(body) >= 4 * MiB
    response = http.post("/v1/completions", content=body,
                         headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text[:300]
    assert response.json()["usage"]["prompt_tokens"] > 100_000
    assert response.headers["x-corral-worker"]


def test_body_over_the_limit_is_413_in_openai_format(http: httpx.Client) -> None:
    body = b'{"model": "corral-demo", "prompt": "' + b"a" * (9 * MiB) + b'"}'
    response = http.post("/v1/completions", content=body,
                         headers={"content-type": "application/json"})
    assert response.status_code == 413
    _error(response)


def test_chunked_body_over_the_limit_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "corral-demo", "prompt": "'
        for _ in range(9):
            yield b"a" * MiB
        yield b'"}'

    response = http.post("/v1/completions", content=chunks(),
                         headers={"content-type": "application/json"})
    assert response.status_code == 413
    _error(response)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        pytest.param(b'{"model": "corral-demo", "messages": [', "char", id="truncated"),
        pytest.param(b'{"model": corral-demo}', "char", id="malformed"),
    ],
)
def test_broken_json_is_400_saying_where(http: httpx.Client, body: bytes, where: str) -> None:
    response = http.post("/v1/chat/completions", content=body,
                         headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert where in str(_error(response)["message"])


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param([1, 2], id="not-an-object"),
        pytest.param({"model": 5, "messages": []}, id="model-not-string"),
        pytest.param({"model": MODEL, "messages": "hello"}, id="messages-not-list"),
        pytest.param({"model": MODEL, "prompt": {"a": 1}}, id="prompt-object"),
    ],
)
def test_wrong_types_are_400(http: httpx.Client, payload: object) -> None:
    path = "/v1/completions" if isinstance(payload, dict) and "prompt" in payload else (
        "/v1/chat/completions"
    )
    response = http.post(path, json=payload)
    assert response.status_code == 400, response.text
    _error(response)


def test_missing_model_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions",
                         json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    assert _error(response)["param"] == "model"


def test_client_cannot_choose_the_worker(stack: Stack, http: httpx.Client) -> None:
    # Growing-prefix traffic would stick to one worker; a client header naming the
    # other one must not move it.
    pinned = f"127.0.0.1:{stack.sim_ports[1]}"
    served = set()
    for i in range(6):
        response = http.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": "same prefix " * 50 + str(i), "max_tokens": 1},
            headers={"x-gateway-destination-endpoint": pinned, "x-corral-pool": "x"},
        )
        assert response.status_code == 200
        served.add(response.headers["x-corral-worker"])
    assert len(served) == 1


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/chat/completions", {"model": MODEL, "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [
                {"type": "text", "text": "describe"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "c1", "type": "function",
                "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ], "max_tokens": 2}),
        ("/v1/completions", {"model": MODEL, "prompt": [[1, 2, 3], [4, 5]],
                             "max_tokens": 2}),
        ("/v1/embeddings", {"model": MODEL, "input": ["a", "b"]}),
    ],
    ids=["chat-parts-tools", "completions-token-lists", "embeddings"],
)
def test_request_shapes_reach_a_worker_unchanged(
    http: httpx.Client, path: str, payload: dict[str, object]
) -> None:
    response = http.post(path, json=payload)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["x-corral-worker"]


def test_pool_without_ready_worker_is_503_with_retry_after(
    http: httpx.Client,
) -> None:
    response = http.post("/v1/chat/completions", json={
        "model": "idle-model", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 503
    assert _error(response)["code"] == "no_healthy_worker"
    assert response.headers["retry-after"]
    ok = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "still there?"}],
        "max_tokens": 2})
    assert ok.status_code == 200


def test_a_huge_prompt_does_not_stall_the_control_plane(stack: Stack) -> None:
    import threading

    words = "alpha beta gamma delta " * (4 * MiB // 23)
    body = json.dumps({"model": MODEL, "prompt": words, "max_tokens": 1}).encode()
    result: dict[str, int] = {}

    def big() -> None:
        with httpx.Client(base_url=stack.gateway, timeout=120) as client:
            result["status"] = client.post(
                "/v1/completions", content=body,
                headers={"content-type": "application/json"},
            ).status_code

    sender = threading.Thread(target=big)
    sender.start()
    slowest = 0.0
    with httpx.Client(timeout=30) as client:
        while sender.is_alive():
            answered = client.get(f"{stack.admin}/healthz")
            assert answered.status_code == 200
            slowest = max(slowest, answered.elapsed.total_seconds())
    sender.join()
    assert result["status"] == 200
    # Before the tokenizer released the GIL, one such prompt held the loop for
    # seconds; the bound is loose on purpose (a busy 2-core machine).
    assert slowest < 2.0, slowest


@pytest.mark.parametrize(("method", "path"), [("GET", "/metrics"), ("POST", "/sim/faults")])
def test_engine_operational_routes_are_not_reachable_through_the_gateway(
    http: httpx.Client, method: str, path: str
) -> None:
    response = http.request(method, path, json={"error_rate": 1.0})
    assert response.status_code == 404
    assert _error(response)["code"] == "not_found"
