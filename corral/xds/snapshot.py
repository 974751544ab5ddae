"""Immutable, versioned, consistency-checked sets of xDS resources.

A snapshot holds every resource Envoy may ask for, already packed into ``Any``
so each push reuses the same bytes. Versions are content hashes (sha256 of the
deterministic serialisation): the same content always gets the same version, so
versions survive a control-plane restart and Envoy reconnecting with its last
accepted ``version_info`` or ``initial_resource_versions`` sees nothing new.
https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#resource-versions
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2

from corral.errors import ConfigError
from corral.xds import type_urls

_VERSION_HEX = 16


@dataclass(frozen=True, slots=True)
class Resource:
    """One named resource, packed once, with its content version."""

    name: str
    version: str
    packed: any_pb2.Any


def _content_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_VERSION_HEX]


def _resource(name: str, message: object) -> Resource:
    packed = any_pb2.Any()
    packed.Pack(message)
    data = packed.value  # Pack serialises deterministically
    return Resource(name=name, version=_content_version(data), packed=packed)


def _type_version(resources: Mapping[str, Resource]) -> str:
    digest = hashlib.sha256()
    for name in sorted(resources):
        digest.update(name.encode("utf-8"))
        digest.update(b"\0")
        digest.update(resources[name].version.encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()[:_VERSION_HEX]


class Snapshot:
    """Clusters and their load assignments at one moment; never mutated.

    ``version(type_url)`` is the state-of-the-world version of one type;
    ``resources(type_url)`` maps resource names to ``Resource`` (for Delta).
    """

    __slots__ = ("_resources", "_versions")

    def __init__(self, resources: Mapping[str, Mapping[str, Resource]]) -> None:
        self._resources = MappingProxyType(
            {
                t: MappingProxyType(dict(resources.get(t, {})))
                for t in type_urls.PUSH_ORDER
            }
        )
        self._versions = MappingProxyType(
            {t: _type_version(r) for t, r in self._resources.items()}
        )

    @classmethod
    def build(
        cls,
        clusters: Iterable[cluster_pb2.Cluster],
        assignments: Iterable[endpoint_pb2.ClusterLoadAssignment],
    ) -> Snapshot:
        """Pack and version the resources; raises ``ConfigError`` if inconsistent."""
        clusters = list(clusters)
        cds = {c.name: _resource(c.name, c) for c in clusters}
        eds = {a.cluster_name: _resource(a.cluster_name, a) for a in assignments}
        snapshot = cls({type_urls.CLUSTER: cds, type_urls.ENDPOINT: eds})
        snapshot.check_consistent(clusters_by_name={c.name: c for c in clusters})
        return snapshot

    def check_consistent(
        self, *, clusters_by_name: Mapping[str, cluster_pb2.Cluster] | None = None
    ) -> None:
        """Every EDS cluster must have its assignment, else Envoy warms forever.

        The rule mirrors go-control-plane's ``Snapshot.Consistent``: a cluster
        whose endpoints never come would sit warming until its initial fetch
        timeout, so such a snapshot is refused instead of published.
        """
        endpoints = self._resources[type_urls.ENDPOINT]
        for name, resource in self._resources[type_urls.CLUSTER].items():
            cluster = (clusters_by_name or {}).get(name)
            if cluster is None:
                cluster = cluster_pb2.Cluster()
                resource.packed.Unpack(cluster)
            if cluster.type != cluster_pb2.Cluster.EDS:
                continue
            service = cluster.eds_cluster_config.service_name or cluster.name
            if service not in endpoints:
                raise ConfigError(
                    f"inconsistent xDS snapshot: cluster {name!r} has no "
                    f"ClusterLoadAssignment {service!r}"
                )

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{type_urls.short_name(t)}={len(r)}@{self._versions[t]}"
            for t, r in self._resources.items()
        )
        return f"<Snapshot {counts}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        return dict(self._versions) == dict(other._versions)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._versions.items())))

    def version(self, type_url: str) -> str:
        return self._versions.get(type_url, "")

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        return self._resources.get(type_url, MappingProxyType({}))

    def select(self, type_url: str, names: Iterable[str] | None) -> list[Resource]:
        """Resources of one type by name, in name order; ``None`` means all."""
        available = self.resources(type_url)
        if names is None:
            return [available[n] for n in sorted(available)]
        return [available[n] for n in sorted(set(names)) if n in available]


EMPTY = Snapshot({})
