"""Sources that write workers into the registry, and the checks that admit them.

Sources: ``StaticSource`` (configuration), ``FileSource`` (a watched manifest),
the admin API (``corral.admin``) and Kubernetes (``corral.discovery.kubernetes``,
imported on its own so its client library loads only when used). Every source
syncs through ``sync_source`` and removes through ``drain_and_remove``.
``HealthChecker`` admits PENDING workers and tracks READY / NOT_READY;
``EngineLoadPoller`` reads the engines' own load metrics.
"""

from corral.discovery.base import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DiscoverySource,
    SyncResult,
    sync_source,
    worker_from_spec,
)
from corral.discovery.drain import cancel_drain, drain_and_remove, start_drain
from corral.discovery.file import FileSource, ManifestError, parse_manifest
from corral.discovery.health import HealthChecker, track_workers_gauge
from corral.discovery.load_metrics import (
    EngineLoadPoller,
    EngineReading,
    parse_engine_metrics,
)
from corral.discovery.probe import (
    ProbeResult,
    fetch_models,
    probe_health,
    probe_registration,
)
from corral.discovery.static import StaticSource

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT_S",
    "DiscoverySource",
    "EngineLoadPoller",
    "EngineReading",
    "FileSource",
    "HealthChecker",
    "ManifestError",
    "ProbeResult",
    "StaticSource",
    "SyncResult",
    "cancel_drain",
    "drain_and_remove",
    "fetch_models",
    "parse_engine_metrics",
    "parse_manifest",
    "probe_health",
    "probe_registration",
    "start_drain",
    "sync_source",
    "track_workers_gauge",
    "worker_from_spec",
]
