"""The rendered Envoy bootstrap, its example file and the envoy-config command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.cli import main
from corral.config.settings import Settings, parse_settings
from corral.envoy_binary import find_envoy
from corral.extproc import headers as extproc_names
from corral.xds.bootstrap import OBSERVER_FILTER, TICKET_NAMESPACE, render_bootstrap

EXAMPLE = Path(__file__).resolve().parents[3] / "envoy" / "corral-envoy.yaml"


def _hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def _routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    return _hcm(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]  # type: ignore[no-any-return]


def test_example_file_matches_the_default_settings() -> None:
    assert yaml.safe_load(EXAMPLE.read_text()) == render_bootstrap(Settings())


def test_filters_run_strip_then_picker_then_observer_then_router() -> None:
    filters = _hcm(render_bootstrap(Settings()))["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.ext_proc",
        OBSERVER_FILTER,
        "envoy.filters.http.router",
    ]
    removed = [m["remove"] for m in
               filters[0]["typed_config"]["mutations"]["request_mutations"]]
    assert set(removed) == {
        "x-gateway-destination-endpoint", "x-gateway-destination-endpoint-served",
        "x-corral-pool", "x-corral-cluster", "x-corral-stream", "x-corral-worker",
    }


def test_picker_sees_only_the_request_and_receives_the_ticket_namespace() -> None:
    picker = _hcm(render_bootstrap(Settings()))["http_filters"][1]["typed_config"]
    assert picker["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SKIP",
        "response_body_mode": "NONE",
        "response_trailer_mode": "SKIP",
    }
    assert "observability_mode" not in picker
    assert picker["metadata_options"]["receiving_namespaces"]["untyped"] == [
        "envoy.lb", extproc_names.TICKET_NAMESPACE]
    closed = parse_settings({"envoy": {"failure_mode_allow": False}})
    picker = _hcm(render_bootstrap(closed))["http_filters"][1]["typed_config"]
    assert picker["failure_mode_allow"] is False


def test_observer_watches_the_response_unawaited_and_always_fails_open() -> None:
    closed = parse_settings({"envoy": {"failure_mode_allow": False}})
    for settings in (Settings(), closed):
        observer = _hcm(render_bootstrap(settings))["http_filters"][2]["typed_config"]
        assert observer["observability_mode"] is True
        assert observer["failure_mode_allow"] is True
    assert observer["grpc_service"]["envoy_grpc"]["cluster_name"] == (
        "corral_control_plane")
    assert observer["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SEND",
        "response_body_mode": "STREAMED",
        "response_trailer_mode": "SKIP",
    }
    assert observer["response_attributes"] == ["upstream.address"]
    assert observer["deferred_close_timeout"] == "2s"
    # The ticket the picker leaves reaches the observer; the two modules name
    # the namespace separately (xds and extproc do not import each other).
    assert TICKET_NAMESPACE == extproc_names.TICKET_NAMESPACE
    assert observer["metadata_options"]["forwarding_namespaces"]["untyped"] == [
        TICKET_NAMESPACE]


def test_every_picked_route_names_the_serving_worker_by_address() -> None:
    settings = parse_settings({"models": [{"name": "a"}, {"name": "b"}],
                               "default_model": "a"})
    routes = _routes(render_bootstrap(settings))
    # Fail-open traffic (the catch-all) carries no x-corral-worker: its absence
    # tells a client the picker did not route the request.
    assert routes[-1]["name"] == "default_pool"
    assert "response_headers_to_add" not in routes[-1]
    for route in routes[:-1]:
        assert route["response_headers_to_add"] == [{
            "header": {"key": "x-corral-worker", "value": "%UPSTREAM_HOST%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }], route["name"]
    no_pool = _routes(render_bootstrap(parse_settings(
        {"models": [{"name": "a"}, {"name": "b"}]})))[-1]
    assert "x-corral-worker" not in json.dumps(no_pool)
    assert _hcm(render_bootstrap(settings))["always_set_request_id_in_response"]


def test_one_route_per_pool_then_catch_all_to_the_only_pool() -> None:
    settings = parse_settings({"models": [{"name": "a/b"}],
                               "retry": {"attempts": 3, "retry_on_statuses": [503]}})
    routes = _routes(render_bootstrap(settings))
    assert routes[0]["match"]["headers"][0] == {
        "name": "x-corral-pool", "string_match": {"exact": "a/b"}}
    assert routes[0]["route"]["timeout"] == "0s"
    assert routes[0]["route"]["retry_policy"]["num_retries"] == 2
    assert routes[0]["route"]["retry_policy"]["retriable_status_codes"] == [503]
    assert routes[-1]["route"]["cluster"] == routes[0]["route"]["cluster"]


def test_first_byte_timeout_is_a_retried_per_try_idle_timeout() -> None:
    default = {r["name"]: r for r in _routes(
        render_bootstrap(parse_settings({"models": [{"name": "m"}]})))}
    streamed = default["pool_corral_pool_m_stream"]
    assert {"name": "x-corral-stream", "present_match": True} in (
        streamed["match"]["headers"])
    policy = streamed["route"]["retry_policy"]
    assert policy["per_try_idle_timeout"] == "60s"
    assert "per_try_timeout" not in policy
    # The ended attempt is retried as a reset (router docs, x-envoy-retry-on).
    assert "reset" in policy["retry_on"].split(",")
    # A non-streamed answer's first byte comes when generation ends: no default
    # limit there, or a long generation would be cut.
    plain = default["pool_corral_pool_m"]["route"]["retry_policy"]
    assert "per_try_idle_timeout" not in plain
    assert "per_try_idle_timeout" not in default["default_pool"]["route"]["retry_policy"]
    tuned = parse_settings({
        "models": [{"name": "m"}],
        "timeouts": {"first_byte_s": 2.5},
        "retry": {"per_try_timeout_s": 90},
    })
    for route in _routes(render_bootstrap(tuned)):
        if "route" in route:
            policy = route["route"]["retry_policy"]
            assert policy["per_try_idle_timeout"] == "2.5s"
            assert policy["per_try_timeout"] == "90s"


def test_catch_all_without_a_default_pool_is_a_json_503() -> None:
    settings = parse_settings({"models": [{"name": "a"}, {"name": "b"}]})
    last = _routes(render_bootstrap(settings))[-1]
    assert last["direct_response"]["status"] == 503
    assert json.loads(last["direct_response"]["body"]["inline_string"])["error"]


def test_delta_flag_and_setting_select_delta_grpc() -> None:
    ads = "dynamic_resources"
    assert render_bootstrap(Settings())[ads]["ads_config"]["api_type"] == "GRPC"
    delta = parse_settings({"envoy": {"ads_delta": True}})
    assert render_bootstrap(delta)[ads]["ads_config"]["api_type"] == "DELTA_GRPC"
    assert render_bootstrap(Settings(), delta=True)[ads]["ads_config"][
        "api_type"] == "DELTA_GRPC"


def test_access_log_only_when_asked() -> None:
    assert "access_log" not in _hcm(render_bootstrap(Settings()))
    logged = parse_settings({"logging": {"access_log": True}})
    assert _hcm(render_bootstrap(logged))["access_log"]


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_envoy_config_command_writes_a_bootstrap_envoy_accepts(
    tmp_path: Path, fmt: str
) -> None:
    config = tmp_path / "corral.yaml"
    config.write_text("models:\n  - name: tiny\n")
    out = tmp_path / f"envoy.{fmt}"
    assert main(["envoy-config", "--config", str(config), "-o", str(out),
                 "--format", fmt, "--delta"]) == 0
    data = json.loads(out.read_text()) if fmt == "json" else yaml.safe_load(
        out.read_text())
    assert data["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    result = subprocess.run(
        [str(find_envoy()), "--mode", "validate", "-c", str(out), "-l", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
