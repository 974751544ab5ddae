"""A plain Envoy bootstrap: one listener, one static round-robin cluster, no ext_proc.

This is the baseline for "what Envoy alone costs": the same Envoy binary Corral
runs, with the HTTP connection manager and router filter only. Settings that
would otherwise cut long requests short are relaxed on purpose:

- route ``timeout: 0s`` disables the 15 s default upstream timeout
  (https://www.envoyproxy.io/docs/envoy/v1.40.0/api-v3/config/route/v3/
  route_components.proto#envoy-v3-api-field-config-route-v3-routeaction-timeout),
  which a 100K-token prefill exceeds;
- the connection manager's ``stream_idle_timeout`` stays at its 5 minute default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit


def render_round_robin_bootstrap(
    *, listen_port: int, admin_port: int, worker_urls: Sequence[str]
) -> dict[str, Any]:
    """The bootstrap as a dict (dump it as YAML or JSON for ``envoy -c``)."""
    endpoints = []
    for url in worker_urls:
        parts = urlsplit(url)
        endpoints.append(
            {
                "endpoint": {
                    "address": {
                        "socket_address": {
                            "address": parts.hostname,
                            "port_value": parts.port,
                        }
                    }
                }
            }
        )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {
            "name": "all",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "workers", "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "admin": {
            "address": {
                "socket_address": {"address": "127.0.0.1", "port_value": admin_port}
            }
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": {
                        "socket_address": {
                            "address": "127.0.0.1",
                            "port_value": listen_port,
                        }
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network."
                                    "http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "workers",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {
                        "cluster_name": "workers",
                        "endpoints": [{"lb_endpoints": endpoints}],
                    },
                }
            ],
        },
    }
