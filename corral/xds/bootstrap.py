"""The Envoy bootstrap for a Corral configuration, as plain data.

Static parts live here: the listener with its filter chain (strip routing
headers, the picker's ext_proc, the observer's ext_proc, router), the routes by
``x-corral-pool``, and the one static cluster that reaches Corral's gRPC server
for both ext_proc filters and ADS. Pool clusters and endpoints arrive over ADS
(``corral.xds.service``).

The picker sees only the request, and Envoy waits for its answer; the observer
(``observability_mode``) sees the response and Envoy never waits for it. Awaited
response phases cost ~0.9 ms per request on loopback (envoy/README.md), and the
response side only watches: usage, timings, the served worker, the end.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from corral.config.settings import Address, Settings
from corral.xds.names import (
    CLUSTER_HEADER,
    CONTROL_PLANE_CLUSTER,
    LB_METADATA_NAMESPACE,
    POOL_HEADER,
    STREAM_HEADER,
    STRIPPED_REQUEST_HEADERS,
    WORKER_HEADER,
    pool_cluster_name,
)
from corral.xds.resources import buffer_limit_bytes

_TYPE = "type.googleapis.com/"
_GRPC_HEADROOM_BYTES = 1024 * 1024
"""Above ``max_body_bytes``: a whole buffered body plus its framing fits one message."""

STRIPPED_HEADERS = STRIPPED_REQUEST_HEADERS
"""Routing headers a client must never choose: removed before ext_proc runs."""

MAX_REQUEST_HEADERS_KB = 96

TICKET_NAMESPACE = "corral.observe"
"""Dynamic metadata the picker writes and the observer's stream receives: the
ticket that pairs the two streams of one request. Must equal
``corral.extproc.headers.TICKET_NAMESPACE`` (xds and extproc do not import each
other; the bootstrap tests check that they agree)."""

OBSERVER_FILTER = "corral.ext_proc.observer"
OBSERVER_DEFERRED_CLOSE = "2s"
"""How long Envoy keeps the observer's stream open after the HTTP stream ends
(Envoy's default is 5 s). Its messages are queued before that, so this bounds
only how late an abort (no end of stream) is settled."""


def _worker_response_header() -> list[dict[str, Any]]:
    """``x-corral-worker`` on the routes the picker's ``x-corral-pool`` or
    ``x-corral-cluster`` selects: the address (``ip:port``) of the worker that
    served the last attempt, substituted by Envoy itself. Worker ids are that address
    for every source but Kubernetes (``namespace/pod:port``); the header always
    carries the address. A reply no upstream made (a local reply, a picker's
    refusal) has no upstream host and gets no header (seen on Envoy 1.40)."""
    # A fresh object per route: shared ones become YAML anchors in the file.
    return [
        {
            "header": {"key": WORKER_HEADER, "value": "%UPSTREAM_HOST%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]


DEFAULT_FIRST_BYTE_S = 60.0
"""Per-attempt limit on upstream silence when ``timeouts.first_byte_s`` is unset:
long enough for a long prefill, short enough that a worker which accepts a
request and never answers does not hold the client for ``timeouts.idle_s``."""

# Envoy's own local replies (its text/plain bodies) as OpenAI error JSON, keyed by
# status. Replies that already carry application/json (ext_proc's immediate
# responses) are left as they are.
_LOCAL_REPLIES: tuple[tuple[int, str, str], ...] = (
    (400, "invalid_request_error", "invalid_request"),
    (404, "invalid_request_error", "not_found"),
    (408, "invalid_request_error", "request_timeout"),
    (413, "invalid_request_error", "request_too_large"),
    (431, "invalid_request_error", "request_headers_too_large"),
    (500, "internal_error", "internal_error"),
    (502, "service_unavailable", "bad_gateway"),
    (503, "service_unavailable", "no_healthy_upstream"),
    (504, "service_unavailable", "upstream_timeout"),
)


def _seconds(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _socket(address: Address) -> dict[str, Any]:
    return {"socket_address": {"address": address.host, "port_value": address.port}}


def grpc_max_message_bytes(settings: Settings) -> int:
    """gRPC message size limit on both sides of the control-plane connection."""
    return settings.limits.max_body_bytes + _GRPC_HEADROOM_BYTES


def _control_plane_target(settings: Settings) -> tuple[Address, str]:
    """Where Envoy dials Corral, and the cluster type that address needs: STATIC
    for an IP literal, STRICT_DNS for a name (a Kubernetes Service, a compose
    service). A wildcard listen address is dialled on loopback."""
    target = settings.envoy.control_plane or settings.grpc
    if target.host in ("0.0.0.0", "::"):
        target = Address(host="127.0.0.1", port=target.port)
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        return target, "STRICT_DNS"
    return target, "STATIC"


def _control_plane_cluster(settings: Settings) -> dict[str, Any]:
    target, cluster_type = _control_plane_target(settings)
    return {
        "name": CONTROL_PLANE_CLUSTER,
        "type": cluster_type,
        "connect_timeout": _seconds(settings.timeouts.connect_s),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE
                + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # ext_proc streams are long and many: do not cap them.
                        "max_concurrent_streams": 1_000_000,
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"},
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": CONTROL_PLANE_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket(target)}}]}
            ],
        },
    }


def _header_strip_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _TYPE
            + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {
                "request_mutations": [{"remove": name} for name in STRIPPED_HEADERS]
            },
        },
    }


def _ext_proc_filter(settings: Settings) -> dict[str, Any]:
    """The picker: request phases only, answered before the request goes on."""
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _TYPE
            + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {
                    "cluster_name": CONTROL_PLANE_CLUSTER,
                    "max_receive_message_length": grpc_max_message_bytes(settings),
                },
            },
            # Fail open (settings.envoy.failure_mode_allow): without the picker the
            # request still reaches its pool through the cluster's fallback LB.
            "failure_mode_allow": settings.envoy.failure_mode_allow,
            # The response is the observer's (below): no awaited response phase.
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
            "allow_mode_override": True,
            "message_timeout": "10s",
            # Without this, dynamic metadata the server returns is dropped:
            # envoy.lb (the endpoint list) and the observer's ticket.
            "metadata_options": {
                "receiving_namespaces": {
                    "untyped": [LB_METADATA_NAMESPACE, TICKET_NAMESPACE]
                }
            },
        },
    }


def _observer_filter() -> dict[str, Any]:
    """The observer: the request headers (the picker's decision and ticket ride
    on them) and the whole response, sent without waiting for an answer
    (``observability_mode``, https://www.envoyproxy.io/docs/envoy/v1.40.0/api-v3/
    extensions/filters/http/ext_proc/v3/ext_proc.proto). What Envoy sends it,
    as seen on Envoy 1.40, is written down in ``corral/extproc/watch.py``."""
    return {
        "name": OBSERVER_FILTER,
        "typed_config": {
            "@type": _TYPE
            + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": CONTROL_PLANE_CLUSTER}},
            "observability_mode": True,
            # Watching must never fail a request, whatever the picker's policy.
            "failure_mode_allow": True,
            "deferred_close_timeout": OBSERVER_DEFERRED_CLOSE,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SEND",
                "response_body_mode": "STREAMED",
                "response_trailer_mode": "SKIP",
            },
            "metadata_options": {
                "forwarding_namespaces": {"untyped": [TICKET_NAMESPACE]}
            },
            # The host that really served, after any retry.
            "response_attributes": ["upstream.address"],
        },
    }


def _retry_policy(settings: Settings, first_byte_s: float | None) -> dict[str, Any]:
    retry = settings.retry
    policy: dict[str, Any] = {
        "retry_on": "connect-failure,refused-stream,reset,retriable-status-codes",
        "retriable_status_codes": list(retry.retry_on_statuses),
        "num_retries": retry.attempts - 1,
        # Retries walk the picker's fallback list; when they fall back to round
        # robin, they must not land on a host that already failed.
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.retry.host.previous_hosts"
                    ".v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }
    # A worker that accepts and never answers: once an attempt has gone
    # first_byte_s without a byte, Envoy ends it and, while nothing has reached
    # the client yet, retries on the next endpoint of the picker's list. The
    # ended attempt counts as a reset ("the upstream server does not respond at
    # all (disconnect/reset/read timeout)"), which `reset` above retries:
    # https://www.envoyproxy.io/docs/envoy/v1.40.0/configuration/http/http_filters/router_filter#x-envoy-retry-on
    # Checked against Envoy 1.40 (tests/e2e/test_faults_workers.py): without
    # `reset` (or `gateway-error`) the client gets a 504 instead. The idle form,
    # not per_try_timeout, so that a stream that keeps sending is never cut
    # however long it runs, and a stream that goes silent mid-way is ended after
    # first_byte_s rather than timeouts.idle_s.
    if first_byte_s is not None:
        policy["per_try_idle_timeout"] = _seconds(first_byte_s)
    if retry.per_try_timeout_s is not None:
        policy["per_try_timeout"] = _seconds(retry.per_try_timeout_s)
    return policy


def first_byte_timeout_s(settings: Settings, *, streaming: bool) -> float | None:
    """Seconds an attempt may go without any byte from the worker before Envoy
    gives up on it and tries the next worker.

    ``timeouts.first_byte_s`` when set. Unset, streamed requests get
    ``DEFAULT_FIRST_BYTE_S`` (their first byte is the first token) and others get
    none: a non-streamed answer sends its first byte only when the whole
    generation is done, and a default must never cut a long generation.
    """
    first_byte = settings.timeouts.first_byte_s
    if first_byte is not None:
        return first_byte
    return DEFAULT_FIRST_BYTE_S if streaming else None


def _pool_action(
    model: str | None, settings: Settings, *, streaming: bool = False
) -> dict[str, Any]:
    """Route action to one pool's cluster, or (``model=None``) to the cluster the
    picker names in ``x-corral-cluster``; ``streaming`` routes carry the
    first-byte limit of streamed requests."""
    target: dict[str, Any] = (
        {"cluster": pool_cluster_name(model)}
        if model is not None
        else {"cluster_header": CLUSTER_HEADER}
    )
    action: dict[str, Any] = {
        **target,
        # Streams of tokens last minutes: no route timeout (Envoy's default 15 s
        # cuts SSE); the idle timeout catches stalled upstreams instead.
        "timeout": "0s",
        "idle_timeout": _seconds(settings.timeouts.idle_s),
        "retry_policy": _retry_policy(
            settings, first_byte_timeout_s(settings, streaming=streaming)
        ),
    }
    if settings.timeouts.total_s is not None:
        action["max_stream_duration"] = {
            "max_stream_duration": _seconds(settings.timeouts.total_s)
        }
    return action


def default_pool(settings: Settings) -> str | None:
    """The pool fail-open traffic goes to: ``default_model`` or the only pool."""
    if settings.default_model:
        model = settings.model(settings.default_model)
        return model.name if model is not None else settings.default_model
    if len(settings.models) == 1:
        return settings.models[0].name
    return None


def _routes(settings: Settings) -> list[dict[str, Any]]:
    """Per pool, a route for streamed requests (the picker sets
    ``x-corral-stream``) and one for the rest; then the same pair for pools found
    by discovery alone, which follow the cluster the picker names; then the
    catch-all for requests the picker did not route (fail-open)."""
    stream_match = {"name": STREAM_HEADER, "present_match": True}
    targets: list[tuple[str, str | None, dict[str, Any]]] = [
        (
            f"pool_{pool_cluster_name(m.name)}",
            m.name,
            {"name": POOL_HEADER, "string_match": {"exact": m.name}},
        )
        for m in settings.models
    ]
    # A model no configuration names has no route of its own; the picker names
    # its cluster in x-corral-cluster (clients' copies are stripped).
    targets.append(
        ("discovered_pools", None, {"name": CLUSTER_HEADER, "present_match": True})
    )
    routes: list[dict[str, Any]] = []
    for name, model, match in targets:
        routes.append(
            {
                "name": f"{name}_stream",
                "match": {"prefix": "/", "headers": [match, stream_match]},
                "route": _pool_action(model, settings, streaming=True),
                "response_headers_to_add": _worker_response_header(),
            }
        )
        routes.append(
            {
                "name": name,
                "match": {"prefix": "/", "headers": [match]},
                "route": _pool_action(model, settings),
                "response_headers_to_add": _worker_response_header(),
            }
        )
    fallback = default_pool(settings)
    if fallback is not None:
        # No x-corral-worker here: only requests the picker routed carry it, so
        # its absence marks fail-open traffic.
        routes.append(
            {
                "name": "default_pool",
                "match": {"prefix": "/"},
                "route": _pool_action(fallback, settings),
            }
        )
    else:
        body = (
            '{"error":{"message":"no model pool matches this request and no '
            'default_model is configured","type":"service_unavailable",'
            '"param":null,"code":"no_pool"}}'
        )
        routes.append(
            {
                "name": "no_pool",
                "match": {"prefix": "/"},
                "direct_response": {"status": 503, "body": {"inline_string": body}},
                "response_headers_to_add": [
                    {
                        "header": {"key": "content-type", "value": "application/json"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
            }
        )
    return routes


def _local_reply_config() -> dict[str, Any]:
    mappers = []
    for status, error_type, code in _LOCAL_REPLIES:
        mappers.append(
            {
                "filter": {
                    "and_filter": {
                        "filters": [
                            {
                                "status_code_filter": {
                                    "comparison": {
                                        "op": "EQ",
                                        "value": {
                                            "default_value": status,
                                            "runtime_key": (
                                                f"corral.local_reply.{status}"
                                            ),
                                        },
                                    }
                                }
                            },
                            {
                                "extension_filter": {
                                    "name": (
                                        "envoy.access_loggers.extension_filters.cel"
                                    ),
                                    "typed_config": {
                                        "@type": _TYPE
                                        + "envoy.extensions.access_loggers"
                                        ".filters.cel.v3.ExpressionFilter",
                                        # Envoy's own replies have no content-type
                                        # yet when this runs; ext_proc's have one.
                                        "expression": (
                                            "!('content-type' in response.headers) || "
                                            "!response.headers['content-type']"
                                            ".startsWith('application/json')"
                                        ),
                                    },
                                }
                            },
                        ]
                    }
                },
                "body_format_override": {
                    "json_format": {
                        "error": {
                            "message": "%LOCAL_REPLY_BODY%",
                            "type": error_type,
                            "param": None,
                            "code": code,
                        }
                    },
                },
            }
        )
    return {"mappers": mappers}


def _access_log() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": _TYPE
                + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {
                    "text_format_source": {
                        "inline_string": (
                            '[%START_TIME%] "%REQ(:METHOD)% %REQ(:PATH)%" '
                            "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
                            "pool=%REQ(X-CORRAL-POOL)% host=%UPSTREAM_HOST% "
                            "attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% "
                            "duration=%DURATION%ms id=%REQ(X-REQUEST-ID)%\n"
                        )
                    }
                },
            },
        }
    ]


def _listener(settings: Settings) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": _TYPE + "envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "corral",
        "codec_type": "AUTO",
        "always_set_request_id_in_response": True,
        # Whole-request and idle limits for LLM traffic: no cap on a request's
        # total life, but a stream with no bytes for idle_s is ended.
        "request_timeout": "0s",
        "stream_idle_timeout": _seconds(settings.timeouts.idle_s),
        "max_request_headers_kb": MAX_REQUEST_HEADERS_KB,
        "route_config": {
            "name": "corral_routes",
            # Pool clusters arrive over ADS after start-up.
            "validate_clusters": False,
            "virtual_hosts": [
                {"name": "corral", "domains": ["*"], "routes": _routes(settings)}
            ],
        },
        "http_filters": [
            _header_strip_filter(),
            _ext_proc_filter(settings),
            _observer_filter(),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
        "local_reply_config": _local_reply_config(),
    }
    if settings.logging.access_log:
        hcm["access_log"] = _access_log()
    return {
        "name": "corral_listener",
        "address": _socket(settings.envoy.listen),
        "per_connection_buffer_limit_bytes": buffer_limit_bytes(settings),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm,
                    }
                ]
            }
        ],
    }


def render_bootstrap(
    settings: Settings, *, delta: bool | None = None
) -> dict[str, Any]:
    """The full Envoy bootstrap for ``settings``, as JSON-compatible data.

    ``delta`` overrides ``settings.envoy.ads_delta``: True subscribes with
    incremental xDS (``DELTA_GRPC``), False with state of the world (``GRPC``).
    """
    use_delta = settings.envoy.ads_delta if delta is None else delta
    return {
        "node": {"id": settings.envoy.node_id, "cluster": "corral"},
        "admin": {"address": _socket(settings.envoy.admin)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if use_delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": CONTROL_PLANE_CLUSTER,
                            "max_receive_message_length": grpc_max_message_bytes(
                                settings
                            ),
                        }
                    }
                ],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "listeners": [_listener(settings)],
            "clusters": [_control_plane_cluster(settings)],
        },
    }
