"""A fake Kubernetes API server for pods: list and watch, on 127.0.0.1.

It follows the protocol described at
https://kubernetes.io/docs/reference/using-api/api-concepts/ closely enough for a
real client to be driven through every path discovery takes:

* ``GET /api/v1/namespaces/{ns}/pods`` and ``GET /api/v1/pods``, filtered by
  ``labelSelector`` (equality ``=``, ``==``, ``!=``; set-based ``in``, ``notin``,
  ``key``, ``!key``); a list answers a ``PodList`` with the collection's
  ``metadata.resourceVersion``;
* ``watch=1`` streams newline-delimited JSON events ``{"type", "object"}``:
  from a given ``resourceVersion`` it replays the kept history after it, without
  one (or with ``"0"``) it starts with synthetic ADDED events for the current
  pods; a pod that starts or stops matching the selector arrives as ADDED or
  DELETED, as the real server filters;
* ``allowWatchBookmarks`` adds a BOOKMARK every ``bookmark_interval_s``;
* ``timeoutSeconds`` ends the stream cleanly;
* a ``resourceVersion`` older than the kept history window gets an HTTP 200
  stream holding one ERROR event whose object is a ``Status`` with code 410
  (reason ``Expired``), then the stream ends, as the real server does.

Tests change pods through the methods below, close watches (``drop_watches``),
forget history (``compact``) to force 410, and ``stop`` / ``start`` the server on
the same port to play an unreachable API server. The store survives a stop, as
etcd does while an API server restarts.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_DROP = object()
# Go's strconv.ParseBool, which the API server uses for boolean query parameters.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


# -- label selectors -------------------------------------------------------------

def _split_terms(text: str) -> list[str]:
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t.strip() for t in terms if t.strip()]


_SET_TERM = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_TERM = re.compile(r"^([\w./-]+)\s*(==|!=|=)\s*([\w.-]*)$")
_EXISTS_TERM = re.compile(r"^(!?)([\w./-]+)$")


def parse_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """A predicate over labels; raises ValueError on a malformed selector."""
    checks: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(text or ""):
        if m := _SET_TERM.match(term):
            key, op, values = m.group(1), m.group(2), m.group(3)
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            if op == "in":
                checks.append(lambda lb, k=key, a=allowed: lb.get(k) in a)
            else:
                checks.append(lambda lb, k=key, a=allowed: lb.get(k) not in a)
        elif m := _EQ_TERM.match(term):
            key, op, value = m.group(1), m.group(2), m.group(3)
            if op == "!=":
                checks.append(lambda lb, k=key, v=value: lb.get(k) != v)
            else:
                checks.append(lambda lb, k=key, v=value: lb.get(k) == v)
        elif m := _EXISTS_TERM.match(term):
            negate, key = m.group(1) == "!", m.group(2)
            checks.append(lambda lb, k=key, n=negate: (k in lb) != n)
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return lambda labels: all(check(labels) for check in checks)


# -- pods ------------------------------------------------------------------------

def make_pod(
    name: str,
    ip: str | None = "10.0.0.1",
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ready: bool = True,
    phase: str = "Running",
) -> dict[str, Any]:
    """A pod object shaped as the API server returns it."""
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": "True" if ready else "False"},
            {"type": "ContainersReady", "status": "True" if ready else "False"},
        ],
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}-{time.monotonic_ns()}",
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
            "creationTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {"containers": [{"name": "engine", "image": "vllm/vllm-openai"}]},
        "status": status,
    }


def set_ready(pod: dict[str, Any], ready: bool) -> None:
    for condition in pod["status"]["conditions"]:
        condition["status"] = "True" if ready else "False"


@dataclass
class _Event:
    rv: int
    type: str
    old: dict[str, Any] | None
    new: dict[str, Any]


@dataclass
class _Watcher:
    namespace: str | None
    matches: Callable[[dict[str, str]], bool]
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class FakeKubeAPI:
    """The fake server. ``start()`` binds 127.0.0.1 and returns its URL."""

    def __init__(self, *, history_limit: int = 1000, bookmark_interval_s: float = 0.2):
        self.history_limit = history_limit
        self.bookmark_interval_s = bookmark_interval_s
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._rv = 1000
        self._compacted = self._rv
        self._history: list[_Event] = []
        self._watchers: list[_Watcher] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.last_bookmark: int = 0
        """Resource version carried by the latest BOOKMARK sent."""

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._pods_handler)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._pods_handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port or 0, reuse_address=True
        )
        await site.start()
        if self.port is None:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        """Close every watch and stop listening (the port stays reserved)."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def drop_watches(self) -> None:
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(_DROP)

    @property
    def watch_count(self) -> int:
        return len(self._watchers)

    def calls(self, *, watch: bool) -> list[dict[str, str]]:
        """Query parameters of the list (or watch) requests received so far."""
        return [q for _, q in self.requests if (q.get("watch") in _TRUE) == watch]

    # -- store -------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def compact(self) -> None:
        """Forget all history: any watch from an older version gets 410."""
        self._history.clear()
        self._compacted = self._rv

    def add(self, pod: dict[str, Any]) -> dict[str, Any]:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        assert key not in self.pods, f"pod {key} exists"
        self._record("ADDED", None, copy.deepcopy(pod))
        return pod

    def update(self, namespace: str, name: str, change: Callable[[dict], None]) -> None:
        old = self.pods[(namespace, name)]
        new = copy.deepcopy(old)
        change(new)
        self._record("MODIFIED", old, new)

    def terminate(self, namespace: str, name: str) -> None:
        """Start graceful deletion: deletionTimestamp set, the pod still there."""

        def mark(pod: dict[str, Any]) -> None:
            pod["metadata"]["deletionTimestamp"] = "2025-01-01T00:01:00Z"
            pod["metadata"]["deletionGracePeriodSeconds"] = 30

        self.update(namespace, name, mark)

    def delete(self, namespace: str, name: str) -> None:
        old = self.pods[(namespace, name)]
        self._record("DELETED", old, copy.deepcopy(old))

    def _record(self, kind: str, old: dict | None, new: dict[str, Any]) -> None:
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        key = (new["metadata"]["namespace"], new["metadata"]["name"])
        if kind == "DELETED":
            del self.pods[key]
        else:
            self.pods[key] = new
        event = _Event(self._rv, kind, old, new)
        self._history.append(event)
        while len(self._history) > self.history_limit:
            self._compacted = self._history.pop(0).rv
        for watcher in self._watchers:
            watcher.queue.put_nowait(event)

    # -- HTTP --------------------------------------------------------------------

    async def _pods_handler(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((request.path, query))
        namespace = request.match_info.get("namespace")
        try:
            matches = parse_selector(query.get("labelSelector", ""))
        except ValueError as exc:
            return _status(400, "BadRequest", str(exc))
        if query.get("watch") in _TRUE:
            return await self._watch(request, _Watcher(namespace, matches), query)
        items = [
            copy.deepcopy(pod) for (ns, _), pod in sorted(self.pods.items())
            if _selected(pod, namespace, matches)
        ]
        body = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }
        return web.json_response(body)

    async def _watch(
        self, request: web.Request, watcher: _Watcher, query: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        since = query.get("resourceVersion", "")
        bookmarks = query.get("allowWatchBookmarks") in _TRUE
        timeout = float(query.get("timeoutSeconds", "1800"))
        deadline = time.monotonic() + timeout
        if since not in ("", "0") and int(since) < self._compacted:
            await _send(response, "ERROR", {
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": f"too old resource version: {since} ({self._compacted})",
            })
            await response.write_eof()
            return response
        self._watchers.append(watcher)
        try:
            if since in ("", "0"):
                for pod in [p for p in self.pods.values()]:
                    if _selected(pod, watcher.namespace, watcher.matches):
                        await _send(response, "ADDED", pod)
            else:
                for event in [e for e in self._history if e.rv > int(since)]:
                    await _send_filtered(response, watcher, event)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = remaining
                if bookmarks:
                    wait = min(remaining, self.bookmark_interval_s)
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and time.monotonic() < deadline:
                        await _send(response, "BOOKMARK", {
                            "kind": "Pod", "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(self._rv)},
                        })
                        self.last_bookmark = self._rv
                    continue
                if item is _DROP:
                    break
                await _send_filtered(response, watcher, item)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; nothing to finish
        finally:
            self._watchers.remove(watcher)
        return response


def _selected(pod: dict[str, Any], namespace: str | None, matches: Callable) -> bool:
    meta = pod["metadata"]
    if namespace is not None and meta["namespace"] != namespace:
        return False
    return bool(matches(meta.get("labels") or {}))


async def _send(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    line = json.dumps({"type": kind, "object": obj}) + "\n"
    await response.write(line.encode())


async def _send_filtered(
    response: web.StreamResponse, watcher: _Watcher, event: _Event
) -> None:
    was = event.old is not None and _selected(
        event.old, watcher.namespace, watcher.matches
    )
    now = _selected(event.new, watcher.namespace, watcher.matches)
    if event.type == "DELETED":
        if was:
            await _send(response, "DELETED", event.new)
    elif now and not was:
        await _send(response, "ADDED", event.new)
    elif now and was:
        await _send(response, "MODIFIED", event.new)
    elif was and not now:
        await _send(response, "DELETED", event.new)


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "message": message, "code": code,
    }, status=code)
