"""xDS for Envoy: pool clusters and endpoints from the registry, served over ADS."""

from corral.xds.names import pool_cluster_name
from corral.xds.service import AdsServer
from corral.xds.snapshot import Snapshot

__all__ = ["AdsServer", "Snapshot", "pool_cluster_name"]
