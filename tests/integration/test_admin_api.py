"""The admin API over real HTTP on 127.0.0.1, with fake engines behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import pytest

from corral.admin import build_admin_app, start_admin
from corral.config.settings import HealthCheckConfig, Settings
from corral.discovery import HealthChecker
from corral.pool import WorkerRegistry, WorkerState, make_worker
from tests.unit.discovery.fake_worker import eventually, fake_worker  # noqa: F401

TOKEN = "s3cret-admin-token"


@dataclass
class Admin:
    registry: WorkerRegistry
    base: str
    session: aiohttp.ClientSession
    headers: dict[str, str]

    def url(self, path: str) -> str:
        return self.base + path


async def _serve(settings: Settings, readiness=None) -> AsyncIterator[Admin]:
    registry = WorkerRegistry()
    app = build_admin_app(registry, settings, readiness=readiness)
    server = await start_admin(app, "127.0.0.1", 0)
    checker = asyncio.create_task(
        HealthChecker(registry, HealthCheckConfig(interval_s=0.05, timeout_s=1)).run()
    )
    headers = {"Authorization": f"Bearer {settings.admin_token}"} if (
        settings.admin_token
    ) else {}
    try:
        async with aiohttp.ClientSession() as session:
            yield Admin(registry, f"http://127.0.0.1:{server.port}", session, headers)
    finally:
        checker.cancel()
        await asyncio.gather(checker, return_exceptions=True)
        await server.stop()


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    settings = Settings(
        admin_token=TOKEN, health_check=HealthCheckConfig(drain_timeout_s=5)
    )
    async for served in _serve(settings):
        yield served


@pytest.fixture
async def open_admin() -> AsyncIterator[Admin]:
    async for served in _serve(Settings()):
        yield served


async def _post(admin: Admin, body, headers=None):
    async with admin.session.post(
        admin.url("/workers"), json=body, headers=admin.headers if headers is None
        else headers,
    ) as response:
        return response.status, await response.json(), response.headers


async def _get(admin: Admin, path: str, headers=None):
    async with admin.session.get(
        admin.url(path), headers=admin.headers if headers is None else headers
    ) as response:
        return response.status, await response.json()


def _assert_openai_error(body, status_type: str) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == status_type


async def test_post_adds_a_pending_worker_that_probing_makes_ready(admin, fake_worker):
    engine = await fake_worker(models=["m"])
    status, body, headers = await _post(admin, {"url": engine.url, "model": "m"})
    assert status == 202
    assert body == {
        "status": "accepted",
        "worker_id": engine.worker_id,
        "url": engine.url,
        "location": "/workers/" + quote(engine.worker_id, safe=""),
    }
    assert headers["Location"] == body["location"]
    assert admin.registry.get(engine.worker_id).source == "admin"
    await eventually(lambda: admin.registry.ready_workers("m") != (), what="READY")

    status, listed = await _get(admin, "/workers")
    assert status == 200
    (view,) = listed["workers"]
    assert view["state"] == "ready"
    assert view["models"] == ["m"]
    assert view["load"]["requests"] == 0


async def test_posting_the_same_url_again_is_idempotent(admin, fake_worker):
    engine = await fake_worker()
    await _post(admin, {"url": engine.url, "models": ["m"]})
    status, body, _ = await _post(admin, {"url": engine.url, "models": ["other"]})
    assert status == 200
    assert body["status"] == "exists"
    assert body["worker"]["models"] == ["m"]
    assert admin.registry.get(engine.worker_id).models == ("m",)
    assert len(admin.registry.snapshot().workers) == 1


async def test_get_one_worker_by_encoded_id_including_ipv6(admin):
    admin.registry.upsert(make_worker("http://[::1]:8123", models=("m",)))
    status, view = await _get(admin, "/workers/" + quote("[::1]:8123", safe=""))
    assert status == 200
    assert view["id"] == "[::1]:8123"
    assert view["address"] == "[::1]:8123"
    status, body = await _get(admin, "/workers/127.0.0.1%3A1")
    assert status == 404
    _assert_openai_error(body, "invalid_request_error")


async def test_delete_drains_in_flight_work_then_removes(admin):
    admin.registry.upsert(make_worker("http://127.0.0.1:8555", models=("m",)))
    admin.registry.set_state("127.0.0.1:8555", WorkerState.READY)
    admin.registry.load("127.0.0.1:8555").begin(3)
    path = "/workers/" + quote("127.0.0.1:8555", safe="")
    async with admin.session.delete(admin.url(path), headers=admin.headers) as resp:
        assert resp.status == 202
        assert (await resp.json())["status"] == "draining"
    assert admin.registry.get("127.0.0.1:8555").state is WorkerState.DRAINING
    status, view = await _get(admin, path)
    assert view["state"] == "draining"
    async with admin.session.delete(admin.url(path), headers=admin.headers) as resp:
        assert resp.status == 202  # a second call joins the same drain
    admin.registry.load("127.0.0.1:8555").end(3)
    await eventually(lambda: admin.registry.get("127.0.0.1:8555") is None, what="gone")
    async with admin.session.delete(admin.url(path), headers=admin.headers) as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ("{not json", None, "not valid JSON"),
        ('["http://127.0.0.1:1"]', None, "JSON object"),
        ('{"model": "m"}', "url", "url"),
        ('{"url": "ftp://127.0.0.1:1"}', "url", "scheme"),
        ('{"url": "http://127.0.0.1:1/v1"}', "url", "path"),
        ('{"url": "http://127.0.0.1:1", "role": "boss"}', "role", "role"),
        ('{"url": "http://127.0.0.1:1", "labels": ["a"]}', "labels", "labels"),
        ('{"url": "http://127.0.0.1:1", "colour": "red"}', "colour", "colour"),
    ],
    ids=["bad-json", "not-object", "no-url", "bad-scheme", "with-path", "bad-role",
         "bad-labels", "unknown-field"],
)
async def test_bad_registrations_are_400_and_change_nothing(
    admin, body, param, fragment
):
    version = admin.registry.snapshot().version
    async with admin.session.post(
        admin.url("/workers"), data=body,
        headers={**admin.headers, "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        error = await response.json()
    _assert_openai_error(error, "invalid_request_error")
    assert error["error"]["param"] == param
    assert fragment in error["error"]["message"]
    assert admin.registry.snapshot().version == version
    assert admin.registry.snapshot().workers == {}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": "Bearer"}],
    ids=["missing", "wrong", "other-scheme", "empty"],
)
async def test_worker_routes_need_the_token_and_refusals_change_nothing(
    admin, headers
):
    admin.registry.upsert(make_worker("http://127.0.0.1:8600", models=("m",)))
    version = admin.registry.snapshot().version
    status, body, response_headers = await _post(
        admin, {"url": "http://127.0.0.1:8601"}, headers=headers
    )
    assert status == 401
    _assert_openai_error(body, "authentication_error")
    assert response_headers["WWW-Authenticate"].startswith("Bearer")
    status, _ = await _get(admin, "/workers", headers=headers)
    assert status == 401
    async with admin.session.delete(
        admin.url("/workers/127.0.0.1%3A8600"), headers=headers
    ) as response:
        assert response.status == 401
    assert admin.registry.snapshot().version == version
    assert admin.registry.get("127.0.0.1:8600").state is WorkerState.PENDING


async def test_open_routes_need_no_token(admin):
    async with admin.session.get(admin.url("/healthz")) as response:
        assert response.status == 200
    async with admin.session.get(admin.url("/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith(
            "text/plain; version=0.0.4"
        )
        assert "corral_workers" in await response.text()


async def test_readyz_follows_ready_workers(open_admin, fake_worker):
    status, body = await _get(open_admin, "/readyz")
    assert status == 503
    _assert_openai_error(body, "service_unavailable")
    assert "no READY worker" in body["error"]["message"]

    engine = await fake_worker()
    status, _, _ = await _post(open_admin, {"url": engine.url})  # no token set
    assert status == 202
    await eventually(lambda: open_admin.registry.get(engine.worker_id).ready,
                     what="READY")
    status, body = await _get(open_admin, "/readyz")
    assert status == 200
    assert body["ready_workers"] == 1


async def test_readyz_honours_the_extra_readiness_check():
    reason: list[str] = ["tokenizer for m not loaded"]
    async for admin in _serve(Settings(), readiness=lambda: reason[0] or None):
        admin.registry.upsert(make_worker("http://127.0.0.1:8700", models=("m",)))
        admin.registry.set_state("127.0.0.1:8700", WorkerState.READY)
        status, body = await _get(admin, "/readyz")
        assert status == 503
        assert body["error"]["message"] == "tokenizer for m not loaded"
        reason[0] = ""
        status, _ = await _get(admin, "/readyz")
        assert status == 200


async def test_unknown_route_and_method_answer_json_errors(open_admin):
    status, body = await _get(open_admin, "/nowhere")
    assert status == 404
    _assert_openai_error(body, "invalid_request_error")
    async with open_admin.session.put(open_admin.url("/workers")) as response:
        assert response.status == 405
        _assert_openai_error(await response.json(), "invalid_request_error")
