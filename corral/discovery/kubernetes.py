"""Kubernetes discovery: follow worker pods by label selector into the registry.

``KubernetesDiscovery`` lists, then watches, the pods each configured selector
matches (in one namespace or all of them) and keeps the registry's
``source="kubernetes"`` workers equal to what the pods say. It speaks the API
server's list-and-watch protocol itself
(https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):

* a list returns the matching pods and the collection's ``resourceVersion``;
* a watch from that version streams ADDED / MODIFIED / DELETED events, plus
  BOOKMARK events (``allowWatchBookmarks``) that only move the version forward;
* a watch ends when its ``timeoutSeconds`` runs out or the connection drops, and
  resumes from the last version seen;
* a version the server no longer keeps is refused with 410 Gone (an ERROR event
  carrying a ``Status`` with code 410, or a plain HTTP 410): the source lists
  again and reconciles the registry with the fresh list.

Failures to reach the API server are retried with capped, jittered exponential
backoff, and the registry is left exactly as it was meanwhile: an unreachable
control plane says nothing about the workers, which keep serving.

``kubernetes_asyncio`` is the client because the whole control plane is one
asyncio process: its requests are aiohttp coroutines on the same loop as the
gRPC servers, so no thread pool, no locking around the registry (every write
happens on the loop thread), and cancellation ends a watch at once. It supplies
the configuration (in-cluster service account, kubeconfig, or an explicit URL),
authentication and the typed endpoints; the event stream is read line by line
here, as raw JSON, so that resource versions and 410 handling follow the
protocol exactly (the library's own ``Watch`` retries a 410 from the same stale
version instead of listing again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from corral.config.settings import (
    KubernetesDiscoveryConfig,
    KubernetesSelector,
    Settings,
)
from corral.discovery.drain import cancel_drain, draining_ids, start_drain
from corral.discovery.kubernetes_pods import (
    PodSkipped,
    PodView,
    pod_key,
    read_pod,
    workers_for_pod,
)
from corral.errors import ConfigError
from corral.observability.metrics import KUBERNETES_WATCH_RESTARTS
from corral.pool import Worker, WorkerRegistry, WorkerState

logger = logging.getLogger(__name__)

DEFAULT_WATCH_TIMEOUT_S = 300.0
DEFAULT_BACKOFF_INITIAL_S = 0.5
DEFAULT_BACKOFF_MAX_S = 30.0
DEFAULT_DRAIN_TIMEOUT_S = 30.0
_CONNECT_TIMEOUT_S = 10.0
_READ_MARGIN_S = 30.0
_SHORT_WATCH_S = 1.0


class _Expired(Exception):
    """The server no longer has the requested resource version (410 Gone)."""


class _ApiError(Exception):
    """The API server answered with an error other than 410."""


# Failures after which the watch is retried with backoff: the API server is
# unreachable, slow, or answered something unusable (ValueError: bad JSON).
_RETRIED = (TimeoutError, aiohttp.ClientError, OSError, _ApiError, ValueError)


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with jitter ("equal jitter": half fixed, half
    random), so that many replicas reconnecting to one API server spread out."""

    initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    max_s: float = DEFAULT_BACKOFF_MAX_S
    failures: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))

    def reset(self) -> None:
        self.failures = 0


async def build_api_client(config: KubernetesDiscoveryConfig) -> k8s_client.ApiClient:
    """An API client configured the first way that applies.

    1. ``kubeconfig`` set: that file (its current context).
    2. running in a pod (``KUBERNETES_SERVICE_HOST`` set): the service account.
    3. otherwise the default kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``),
       unless ``api_server`` alone is given, which then needs no credentials.
    ``api_server``, when set, overrides the server URL of any of them.
    Must be called on the running event loop. Raises ``ConfigError``.
    """
    configuration = k8s_client.Configuration()
    try:
        if config.kubeconfig is not None:
            await k8s_config.load_kube_config(
                config_file=str(config.kubeconfig), client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        elif config.api_server is None:
            await k8s_config.load_kube_config(client_configuration=configuration)
    except (ConfigException, OSError) as exc:
        raise ConfigError(
            f"kubernetes discovery: cannot load credentials: {exc}"
        ) from exc
    if config.api_server is not None:
        configuration.host = config.api_server.rstrip("/")
    return k8s_client.ApiClient(configuration)


class KubernetesDiscovery:
    """A discovery source (``name``, ``async run()``) fed by the Kubernetes API.

    Each selector of ``config.selectors`` is followed by its own list-and-watch
    loop. A pod matched by several selectors belongs to the first of them (its
    role and model come from that one). Worker ids are
    ``<namespace>/<pod>:<port>``. ``run()`` returns only when cancelled; on the
    way out it closes the client and leaves the registry as it is.

    Every registry write happens on the event loop thread, right as an event is
    read, so membership changes reach the registry (and its listeners, the xDS
    server among them) without delay.
    """

    name = "kubernetes"

    def __init__(
        self,
        config: KubernetesDiscoveryConfig,
        registry: WorkerRegistry,
        *,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
        watch_timeout_s: float = DEFAULT_WATCH_TIMEOUT_S,
        backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
    ) -> None:
        if not config.selectors:
            raise ConfigError("kubernetes discovery needs at least one selector")
        self._config = config
        self._registry = registry
        self._drain_timeout_s = drain_timeout_s
        self._watch_timeout_s = watch_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        selectors = config.selectors
        self._pods: list[dict[str, PodView]] = [{} for _ in selectors]
        self._owned: dict[str, set[str]] = {}
        self._was_ready: dict[str, bool] = {}
        self._skipped: dict[str, str] = {}
        self._listed: set[int] = set()
        self._versions: list[str | None] = [None for _ in selectors]
        self._synced = asyncio.Event()

    def __repr__(self) -> str:
        pods = sum(len(p) for p in self._pods)
        workers = sum(len(ids) for ids in self._owned.values())
        return (
            f"<KubernetesDiscovery selectors={len(self._pods)} pods={pods}"
            f" workers={workers}>"
        )

    @property
    def synced(self) -> bool:
        """True once every selector has been listed at least once."""
        return self._synced.is_set()

    @property
    def resource_versions(self) -> tuple[str | None, ...]:
        """The last resource version seen per selector (None before a list)."""
        return tuple(self._versions)

    async def wait_synced(self) -> None:
        """Wait until every selector has been listed (use with a timeout)."""
        await self._synced.wait()

    async def run(self) -> None:
        api_client = await build_api_client(self._config)
        api = k8s_client.CoreV1Api(api_client)
        tasks = [
            asyncio.create_task(self._follow(i, s, api), name=f"k8s-watch-{i}")
            for i, s in enumerate(self._config.selectors)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await api_client.close()

    # -- list and watch --------------------------------------------------------

    async def _follow(
        self, index: int, selector: KubernetesSelector, api: k8s_client.CoreV1Api
    ) -> None:
        backoff = Backoff(self._backoff_initial_s, self._backoff_max_s)
        version: str | None = None
        where = self._config.namespace or "all namespaces"
        while True:
            started = time.monotonic()
            try:
                if version is None:
                    pods, version = await self._list(api, selector)
                    self._versions[index] = version
                    self._replace(index, pods)
                    backoff.reset()
                    logger.info(
                        "kubernetes: listed %d pods for %r in %s at version %s",
                        len(pods),
                        selector.label_selector,
                        where,
                        version,
                    )
                version, events = await self._watch(api, index, selector, version)
                if events or time.monotonic() - started >= _SHORT_WATCH_S:
                    backoff.reset()
                    KUBERNETES_WATCH_RESTARTS.labels("closed").inc()
                    continue
                # A stream that closes at once without news must not spin.
                raise _ApiError("watch closed immediately")
            except _Expired:
                KUBERNETES_WATCH_RESTARTS.labels("expired").inc()
                self._versions[index] = None
                logger.info(
                    "kubernetes: version %s for %r expired (410), listing again",
                    version,
                    selector.label_selector,
                )
                version = None
            except _RETRIED as exc:
                KUBERNETES_WATCH_RESTARTS.labels("error").inc()
                delay = backoff.next_delay()
                logger.warning(
                    "kubernetes: watch of %r failed (%s: %s); membership kept,"
                    " retrying in %.2fs",
                    selector.label_selector,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    def _request(
        self, api: k8s_client.CoreV1Api, selector: KubernetesSelector, **params: Any
    ) -> Any:
        params.update(label_selector=selector.label_selector, _preload_content=False)
        if self._config.namespace:
            return api.list_namespaced_pod(self._config.namespace, **params)
        return api.list_pod_for_all_namespaces(**params)

    async def _list(
        self, api: k8s_client.CoreV1Api, selector: KubernetesSelector
    ) -> tuple[list[Mapping[str, Any]], str]:
        timeout = aiohttp.ClientTimeout(
            sock_connect=_CONNECT_TIMEOUT_S, sock_read=_READ_MARGIN_S
        )
        resp = await self._request(api, selector, _request_timeout=timeout)
        try:
            body = await resp.read()
            if resp.status != 200:
                _raise_for_status(resp.status, body)
            data = json.loads(body)
        finally:
            resp.release()
        version = str((data.get("metadata") or {}).get("resourceVersion", ""))
        if not version:
            raise _ApiError("pod list without a resourceVersion")
        return list(data.get("items") or ()), version

    async def _watch(
        self,
        api: k8s_client.CoreV1Api,
        index: int,
        selector: KubernetesSelector,
        version: str,
    ) -> tuple[str, int]:
        """Apply events until the stream ends; return the last version and count."""
        timeout_s = max(1, int(self._watch_timeout_s * (1 + random.random())))
        client_timeout = aiohttp.ClientTimeout(
            sock_connect=_CONNECT_TIMEOUT_S, sock_read=timeout_s + _READ_MARGIN_S
        )
        resp = await self._request(
            api,
            selector,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=version,
            timeout_seconds=timeout_s,
            _request_timeout=client_timeout,
        )
        events = 0
        try:
            if resp.status != 200:
                _raise_for_status(resp.status, await resp.read())
            async for raw in resp.content:
                line = raw.strip()
                if not line:
                    continue
                version = self._on_event(index, json.loads(line), version)
                self._versions[index] = version
                events += 1
        finally:
            resp.release()
        return version, events

    def _on_event(self, index: int, event: Mapping[str, Any], version: str) -> str:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(kind, str) or not isinstance(obj, dict):
            raise _ApiError(f"malformed watch event: {str(event)[:200]}")
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Expired(obj.get("message", "resource version expired"))
            raise _ApiError(f"watch error {code}: {obj.get('message', obj)}")
        new_version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            view = read_pod(obj)
            self._pods[index][view.key] = view
            self._reconcile(view.key)
        elif kind == "DELETED":
            key = pod_key(obj)
            self._pods[index].pop(key, None)
            self._reconcile(key)
        elif kind != "BOOKMARK":
            logger.debug("kubernetes: ignoring watch event type %r", kind)
        return str(new_version) if new_version else version

    def _replace(self, index: int, pods: list[Mapping[str, Any]]) -> None:
        """Install a fresh list for one selector and reconcile every pod touched."""
        views = [read_pod(p) for p in pods]
        old = self._pods[index]
        self._pods[index] = {v.key: v for v in views}
        for key in sorted(set(old) | set(self._pods[index])):
            self._reconcile(key)
        self._listed.add(index)
        if len(self._listed) == len(self._pods):
            self._synced.set()

    # -- registry --------------------------------------------------------------

    def _reconcile(self, key: str) -> None:
        """Make the registry hold exactly the workers the pod ``key`` should give."""
        for index, pods in enumerate(self._pods):
            view = pods.get(key)
            if view is not None:
                self._apply(view, self._config.selectors[index])
                return
        self._retire(key, "deleted or no longer selected")

    def _apply(self, view: PodView, selector: KubernetesSelector) -> None:
        if view.terminating:
            self._retire(view.key, "terminating")
            return
        if view.finished:
            self._retire(view.key, "finished")
            return
        if view.ip is None:
            self._retire(view.key, "no pod IP")
            return
        try:
            workers = workers_for_pod(view, selector, self._config)
        except PodSkipped as exc:
            if self._skipped.get(view.key) != str(exc):
                logger.warning("kubernetes: pod %s skipped: %s", view.key, exc)
                self._skipped[view.key] = str(exc)
            self._retire(view.key, "skipped")
            return
        self._skipped.pop(view.key, None)
        wanted = {w.id for w in workers}
        owned = self._owned.get(view.key, set())
        self._retire(view.key, "port no longer listed", owned - wanted)
        readiness_changed = self._was_ready.get(view.key) is not view.ready
        self._was_ready[view.key] = view.ready
        state = WorkerState.READY if view.ready else WorkerState.NOT_READY
        for worker in workers:
            # The pod's Ready condition is the source's verdict: a passing
            # /health on an unready pod must not bring it back into rotation.
            self._upsert(replace(worker, admitted=view.ready), state, readiness_changed)
        self._owned[view.key] = wanted

    def _upsert(self, worker: Worker, state: WorkerState, force_state: bool) -> None:
        current = self._registry.get(worker.id)
        if current is not None and current.state is WorkerState.DRAINING:
            # The same pod name is back (a StatefulSet replacement): the old
            # worker's drain gives way to the new one.
            cancel_drain(self._registry, worker.id)
            self._registry.remove(worker.id)
            current = None
        if current is None:
            self._registry.upsert(replace(worker, state=state))
            return
        self._registry.upsert(worker)
        # The pod's readiness moves the state only when it changes, so a health
        # checker's verdict is not overwritten by unrelated pod updates.
        if force_state:
            self._registry.set_state(worker.id, state)

    def _retire(self, key: str, why: str, ids: set[str] | None = None) -> None:
        """Drain, then remove, the workers of pod ``key`` (all, or ``ids``)."""
        owned = self._owned.get(key, set())
        targets = set(owned) if ids is None else ids & owned
        if ids is None:
            self._owned.pop(key, None)
            self._was_ready.pop(key, None)
            if why != "skipped":
                self._skipped.pop(key, None)
        else:
            self._owned[key] = owned - targets
        draining = draining_ids(self._registry)
        for worker_id in sorted(targets):
            if worker_id in draining or self._registry.get(worker_id) is None:
                continue
            logger.info("kubernetes: draining %s (%s)", worker_id, why)
            start_drain(self._registry, worker_id, self._drain_timeout_s)


def build_kubernetes_source(
    settings: Settings, registry: WorkerRegistry
) -> KubernetesDiscovery | None:
    """The Kubernetes source a configuration asks for, or None if it asks none.

    Drains use ``health_check.drain_timeout_s``, as every other source's do.
    """
    config = settings.discovery.kubernetes
    if config is None:
        return None
    return KubernetesDiscovery(
        config, registry, drain_timeout_s=settings.health_check.drain_timeout_s
    )


def _raise_for_status(status: int, body: bytes) -> None:
    message = body[:500].decode("utf-8", "replace")
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(body).get("message", message)
    if status == 410:
        raise _Expired(message)
    raise _ApiError(f"HTTP {status}: {message}")
