"""Pure translation of Kubernetes pod objects into Corral workers.

No I/O here: ``workers_for_pod`` takes a pod as the API server sends it (the
JSON object, camelCase keys) and the selector that matched it, and returns the
workers the pod should contribute, or raises ``PodSkipped`` saying why the pod
cannot be used. The watch loop in ``corral.discovery.kubernetes`` turns that into
registry changes.

Rules (they follow the pod lifecycle documentation,
https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/):

1. A pod with ``metadata.deletionTimestamp`` is terminating: its workers drain.
2. A pod in phase ``Succeeded`` or ``Failed`` is finished: its workers go.
3. A pod without ``status.podIP`` cannot be reached yet: it has no workers.
4. Otherwise each worker port yields one worker, READY when the phase is
   ``Running`` and the ``Ready`` condition is ``"True"``, NOT_READY otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.config.settings import KubernetesDiscoveryConfig, KubernetesSelector
from corral.errors import GatewayError
from corral.pool import Worker, WorkerRole, make_worker

logger = logging.getLogger(__name__)

SOURCE = "kubernetes"
"""``Worker.source`` of every worker this package creates."""

LABEL_NAMESPACE = "corral.io/namespace"
LABEL_POD = "corral.io/pod"
LABEL_POD_UID = "corral.io/pod-uid"

_ROLES = {"prefill": WorkerRole.PREFILL, "decode": WorkerRole.DECODE}
_FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


class PodSkipped(Exception):
    """The pod matched a selector but cannot become a worker; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class PodView:
    """What discovery needs to know about one pod, read once from its JSON."""

    namespace: str
    name: str
    uid: str
    ip: str | None
    ready: bool
    terminating: bool
    finished: bool
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_key(pod: Mapping[str, Any]) -> str:
    """``<namespace>/<name>`` of a pod object."""
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def read_pod(pod: Mapping[str, Any]) -> PodView:
    """Extract the fields discovery uses from a pod object."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    phase = status.get("phase")
    conditions = status.get("conditions") or ()
    ready_condition = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )
    return PodView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        ip=status.get("podIP") or None,
        ready=phase == "Running" and ready_condition,
        terminating=meta.get("deletionTimestamp") is not None,
        finished=phase in _FINISHED_PHASES,
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
    )


def _parse_ports(text: str, what: str) -> list[int]:
    ports: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 0 < int(part) <= 65535:
            raise PodSkipped(f"{what} {text!r} is not a port or comma-separated ports")
        ports.append(int(part))
    if len(set(ports)) != len(ports):
        raise PodSkipped(f"{what} {text!r} repeats a port")
    return ports


def worker_ports(
    pod: PodView, selector: KubernetesSelector, config: KubernetesDiscoveryConfig
) -> list[int]:
    """The pod's worker ports: its annotation, else the selector's, else default."""
    annotation = pod.annotations.get(config.port_annotation)
    if annotation is not None:
        return _parse_ports(annotation, f"annotation {config.port_annotation}")
    if config.require_port_annotation:
        raise PodSkipped(f"annotation {config.port_annotation} is missing")
    return [selector.port if selector.port is not None else config.port]


def bootstrap_ports(
    pod: PodView, ports: list[int], config: KubernetesDiscoveryConfig
) -> list[int | None]:
    """SGLang bootstrap port per worker port: one value for all, or one each."""
    text = pod.annotations.get(config.bootstrap_port_annotation)
    if text is None:
        return [None] * len(ports)
    values = _parse_ports(text, f"annotation {config.bootstrap_port_annotation}")
    if len(values) == 1:
        return [values[0]] * len(ports)
    if len(values) != len(ports):
        raise PodSkipped(
            f"annotation {config.bootstrap_port_annotation} has {len(values)} ports"
            f" for {len(ports)} worker ports"
        )
    return list(values)


def worker_role(
    pod: PodView, selector: KubernetesSelector, config: KubernetesDiscoveryConfig
) -> WorkerRole:
    """A selector's explicit role wins (as a per-role selector says it all);
    otherwise the pod's role label (``llm-d.ai/role`` by default) decides."""
    if selector.role != "regular":
        return WorkerRole(selector.role)
    value = pod.labels.get(config.role_label)
    if value is None or value == "":
        return WorkerRole.REGULAR
    role = _ROLES.get(value.strip().lower())
    if role is None:
        raise PodSkipped(
            f"label {config.role_label}={value!r} is not prefill or decode"
        )
    return role


def worker_models(
    pod: PodView, selector: KubernetesSelector, config: KubernetesDiscoveryConfig
) -> tuple[str, ...]:
    """The model from the pod's label, its annotation, or the selector, in order."""
    for value in (
        pod.labels.get(config.model_label),
        pod.annotations.get(config.model_annotation),
        selector.model,
    ):
        if value and value.strip():
            return (value.strip(),)
    return ()


def workers_for_pod(
    pod: PodView, selector: KubernetesSelector, config: KubernetesDiscoveryConfig
) -> list[Worker]:
    """The workers a usable pod provides (state READY or NOT_READY).

    Raises ``PodSkipped`` when an annotation or label cannot be used. The caller
    handles terminating, finished and address-less pods before calling this.
    """
    ports = worker_ports(pod, selector, config)
    bootstraps = bootstrap_ports(pod, ports, config)
    role = worker_role(pod, selector, config)
    models = worker_models(pod, selector, config)
    labels = {
        **pod.labels,
        LABEL_NAMESPACE: pod.namespace,
        LABEL_POD: pod.name,
        LABEL_POD_UID: pod.uid,
    }
    workers: list[Worker] = []
    for port, bootstrap in zip(ports, bootstraps, strict=True):
        try:
            worker = make_worker(
                f"http://{_bracket(pod.ip or '')}:{port}",
                models=models,
                role=role,
                labels=labels,
                source=SOURCE,
                worker_id=f"{pod.key}:{port}",
                bootstrap_port=bootstrap,
            )
        except GatewayError as exc:
            raise PodSkipped(exc.message) from None
        workers.append(worker)
    return workers


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
