"""Workers listed in a watched manifest file, source "file".

The manifest is JSON or YAML (by extension; otherwise sniffed), either a mapping
``{"workers": [...]}`` (an optional ``version`` key is accepted and ignored) or a
bare list. Each entry has the fields of a configured worker: ``url``, ``model``
or ``models``, ``role``, ``labels``, ``bootstrap_port``.

The file is polled, not watched through inotify, so it works the same on every
platform and on Kubernetes ConfigMap volumes (whose files are swapped through
symlinks). An invalid or missing file never empties the pool: the last good
membership stays and one WARNING names the file and the problem.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corral.config.settings import FileDiscoveryConfig, StaticWorker
from corral.discovery.base import DEFAULT_DRAIN_TIMEOUT_S, sync_source, worker_from_spec
from corral.errors import GatewayError, InvalidRequest
from corral.pool import Worker, WorkerRegistry

logger = logging.getLogger(__name__)

_FULL_READ_EVERY = 10
"""Polls between reads even when mtime and size look unchanged: an edit that
keeps the size within one mtime tick would otherwise go unseen."""


class ManifestError(InvalidRequest):
    """A manifest that cannot be used; the message says where and why."""


def parse_manifest(
    text: str, *, suffix: str = "", source: str = "file"
) -> list[Worker]:
    """Parse manifest text into PENDING workers; raise ``ManifestError`` if invalid.

    ``suffix`` (".json", ".yaml", ".yml") picks the syntax; anything else is
    sniffed: text starting with ``{`` or ``[`` is read as JSON, the rest as YAML.
    Every entry must be valid and ids must be unique, or the whole file is refused.
    """
    document = _load(text, suffix.lower())
    if isinstance(document, dict):
        unknown = sorted(set(document) - {"workers", "version"})
        if unknown:
            raise ManifestError(f"unknown top-level keys: {', '.join(unknown)}")
        if "workers" not in document:
            raise ManifestError('no "workers" key')
        entries = document["workers"]
    else:
        entries = document
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ManifestError(f"workers must be a list, got {type(entries).__name__}")
    workers: dict[str, Worker] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ManifestError(
                f"workers[{index}] must be a mapping, got {type(entry).__name__}"
            )
        try:
            worker = worker_from_spec(StaticWorker.model_validate(entry), source)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ManifestError(f"workers[{index}]: {problems}") from None
        except GatewayError as exc:
            raise ManifestError(f"workers[{index}]: {exc.message}") from None
        if worker.id in workers:
            raise ManifestError(f"workers[{index}]: {worker.id} is listed twice")
        workers[worker.id] = worker
    return list(workers.values())


def _load(text: str, suffix: str) -> Any:
    as_json = suffix == ".json" or (
        suffix not in (".yaml", ".yml") and text.lstrip()[:1] in ("{", "[")
    )
    try:
        if as_json:
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except yaml.YAMLError as exc:
        raise ManifestError(_yaml_problem(exc)) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # PyYAML's str() spans several lines with a caret drawing; keep the facts.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "cannot parse"
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1} column {mark.column + 1}: {problem}"


class FileSource:
    """Polls a manifest every ``poll_interval_s`` and syncs the registry to it."""

    name = "file"

    def __init__(
        self,
        registry: WorkerRegistry,
        config: FileDiscoveryConfig,
        *,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
    ) -> None:
        self._registry = registry
        self._path = Path(config.path)
        self._interval_s = config.poll_interval_s
        self._drain_timeout_s = drain_timeout_s
        self._signature: tuple[int, int] | None = None
        self._digest: str | None = None
        self._error: str | None = None
        self._polls = 0

    def __repr__(self) -> str:
        state = "invalid" if self._error else "ok"
        return f"<FileSource {self._path} {state}>"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def error(self) -> str | None:
        """Why the current file is not in use, or None when it is."""
        return self._error

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(self._interval_s)

    def poll(self) -> bool:
        """Check the file once; return True if the registry was synced to it."""
        self._polls += 1
        try:
            stat = os.stat(self._path)
        except OSError as exc:
            self._signature = self._digest = None
            self._fail(f"cannot read it: {exc.strerror or exc}")
            return False
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature == self._signature and self._polls % _FULL_READ_EVERY:
            return False
        self._signature = signature
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            self._signature = None
            self._fail(f"cannot read it: {exc.strerror or exc}")
            return False
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            text = data.decode("utf-8")
            workers = parse_manifest(text, suffix=self._path.suffix, source=self.name)
        except UnicodeDecodeError:
            self._fail("it is not UTF-8 text")
            return False
        except ManifestError as exc:
            self._fail(exc.message)
            return False
        if self._error is not None:
            logger.info("worker manifest %s is valid again", self._path)
            self._error = None
        sync_source(
            self._registry, self.name, workers, drain_timeout_s=self._drain_timeout_s
        )
        return True

    def _fail(self, problem: str) -> None:
        # One WARNING per distinct problem: a file that stays broken for an hour
        # must not log every poll.
        if problem != self._error:
            logger.warning(
                "worker manifest %s is invalid (%s); keeping the last good membership",
                self._path,
                problem,
            )
        self._error = problem
