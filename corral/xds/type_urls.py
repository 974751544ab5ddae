"""Type URLs of the xDS resources Corral serves, and their short metric names.

https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#resource-types
"""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"

CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"

# Envoy asks for clusters before endpoints, and a push follows the same order so
# that a new cluster exists before its assignment arrives ("make before break",
# https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#eventual-consistency-considerations).
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT)

SHORT_NAMES: dict[str, str] = {CLUSTER: "cds", ENDPOINT: "eds"}


def short_name(type_url: str) -> str:
    """A bounded label for metrics: ``cds``, ``eds`` or ``other``."""
    return SHORT_NAMES.get(type_url, "other")
