"""What every request stream of one server shares: pools, policies, tokenizers,
and the meeting place of pickers and observers.

Model names resolve to pools here: a configured model or one of its aliases, or
a model some worker serves without being configured. Policies are built once per
pool (on first use) and told when a worker leaves; tokenizers are loaded once,
at start-up, in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from corral.config.settings import PolicyConfig, Settings
from corral.errors import ConfigError, MissingModel, ModelNotFound
from corral.extproc.hooks import Admission, AdmitAll, AllowAll, WorkerFilter
from corral.extproc.meeting import OBSERVER_GRACE_S, Meetings
from corral.extproc.prompt import PromptTokenizer
from corral.observability.metrics import IN_FLIGHT
from corral.openai.requests import MODEL_OPTIONAL, Endpoint
from corral.pool.registry import RegistrySnapshot, WorkerRegistry
from corral.routing.base import Candidate, RoutingPolicy
from corral.tokenizer import ModelTokenizer, load_tokenizer

logger = logging.getLogger(__name__)

PolicySource = Callable[[str], RoutingPolicy] | Mapping[str, RoutingPolicy]
TokenizerSource = Callable[[str], ModelTokenizer | None]


def _build_policy(config: PolicyConfig) -> RoutingPolicy:
    try:
        from corral.routing import build_policy
    except ImportError as exc:
        raise ConfigError("routing policies are not available") from exc
    policy: RoutingPolicy = build_policy(config)
    return policy


class ServerContext:
    """Shared, event-loop-thread state of an ``ExtProcServer``."""

    def __init__(
        self,
        registry: WorkerRegistry,
        settings: Settings,
        *,
        policy_for: PolicySource | None,
        tokenizer_for: TokenizerSource | None,
        breaker: WorkerFilter | None,
        admission: Admission | None,
        observer_grace_s: float = OBSERVER_GRACE_S,
    ) -> None:
        self.registry = registry
        self.meetings = Meetings(observer_grace_s)
        """Routed requests whose response the observer filter's stream reports."""
        self.settings = settings
        self.breaker: WorkerFilter = breaker if breaker is not None else AllowAll()
        self.admission: Admission = admission if admission is not None else AdmitAll()
        self.created = int(time.time())
        self.max_body_bytes = settings.limits.max_body_bytes
        self.access_log = settings.logging.access_log
        self._policy_source = policy_for
        self._tokenizer_source = tokenizer_for
        self._policies: dict[str, RoutingPolicy] = {}
        self._candidates: dict[str, tuple[int, list[Candidate]]] = {}
        self._tokenizers: dict[str, PromptTokenizer | None] = {}
        self._names: dict[str, str] = {}
        for model in settings.models:
            self._names[model.name] = model.name
            for alias in model.aliases:
                self._names[alias] = model.name
        self._worker_ids = set(registry.snapshot().workers)
        self._unsubscribe = registry.subscribe(self._on_change)

    def close(self) -> None:
        self._unsubscribe()

    # -- start-up ---------------------------------------------------------------

    async def load_tokenizers(self) -> None:
        """Load each configured model's tokenizer in a thread. A tokenizer that
        fails to load is logged; that model then routes on text."""
        for model in self.settings.models:
            if model.name in self._tokenizers:
                continue
            try:
                if self._tokenizer_source is not None:
                    tokenizer = await asyncio.to_thread(
                        self._tokenizer_source, model.name
                    )
                else:
                    tokenizer = await asyncio.to_thread(load_tokenizer, model.tokenizer)
            except Exception as exc:
                logger.warning(
                    "model %s: tokenizer %r not loaded (%s); routing on text",
                    model.name,
                    model.tokenizer,
                    exc,
                )
                tokenizer = None
            self._tokenizers[model.name] = (
                PromptTokenizer(tokenizer) if tokenizer is not None else None
            )
            if tokenizer is not None:
                logger.info("model %s: tokenizer %s loaded", model.name, tokenizer.name)

    def tokenizer(self, pool: str) -> PromptTokenizer | None:
        """The pool's tokenizer, ``None`` until loaded or when there is none.

        An injected ``tokenizer_for`` is asked on first use for pools that
        ``load_tokenizers`` did not cover (models named only by workers).
        """
        if pool in self._tokenizers:
            return self._tokenizers[pool]
        found: PromptTokenizer | None = None
        if self._tokenizer_source is not None:
            tokenizer = self._tokenizer_source(pool)
            found = PromptTokenizer(tokenizer) if tokenizer is not None else None
            self._tokenizers[pool] = found
        return found

    # -- pools ------------------------------------------------------------------

    def models(self) -> tuple[str, ...]:
        return self.registry.snapshot().models

    def pool_of(self, name: str) -> str | None:
        """The pool a model name (or alias) belongs to, or ``None``."""
        pool = self._names.get(name)
        if pool is not None:
            return pool
        return name if name in self.registry.snapshot().models else None

    def default_pool(self) -> str | None:
        """``default_model`` when set, else the only pool when there is one."""
        if self.settings.default_model:
            return self.pool_of(self.settings.default_model)
        models = self.models()
        return models[0] if len(models) == 1 else None

    def resolve(self, model: str | None, endpoint: Endpoint) -> str | None:
        """The pool for a request. Raises ``ModelNotFound`` or ``MissingModel``.

        ``None`` only for ``Endpoint.OTHER`` without a model or a default pool:
        the request then passes through and Envoy's route table decides.
        """
        if model is not None:
            pool = self.pool_of(model)
            if pool is None:
                raise ModelNotFound(model)
            return pool
        if endpoint in MODEL_OPTIONAL:
            pool = self.default_pool()
            if pool is None and endpoint is not Endpoint.OTHER:
                raise MissingModel()
            return pool
        if self.settings.default_model:
            pool = self.pool_of(self.settings.default_model)
            if pool is not None:
                return pool
        raise MissingModel()

    def policy(self, pool: str) -> RoutingPolicy:
        policy = self._policies.get(pool)
        if policy is None:
            source = self._policy_source
            if source is None:
                config = self.settings.model(pool)
                policy = _build_policy(config.policy if config else PolicyConfig())
            elif callable(source):
                policy = source(pool)
            else:
                policy = source[pool]
            self._policies[pool] = policy
        return policy

    def candidates(self, pool: str) -> list[Candidate]:
        """READY workers of the pool that the breaker allows, with live load.

        The candidate objects are built once per registry version (they hold the
        live ``WorkerLoad``, so they stay current); only the breaker filter runs
        on every request."""
        version = self.registry.snapshot().version
        cached = self._candidates.get(pool)
        if cached is None or cached[0] != version:
            load = self.registry.load
            built = [
                Candidate(worker, load(worker.id))
                for worker in self.registry.ready_workers(pool)
            ]
            cached = (version, built)
            self._candidates[pool] = cached
        allows = self.breaker.allows
        return [c for c in cached[1] if allows(c.worker.id)]

    def _on_change(self, snapshot: RegistrySnapshot) -> None:
        current = set(snapshot.workers)
        removed = self._worker_ids - current
        self._worker_ids = current
        for worker_id in removed:
            with contextlib.suppress(KeyError):
                IN_FLIGHT.remove(worker_id)
            for policy in self._policies.values():
                try:
                    policy.on_worker_removed(worker_id)
                except Exception:
                    logger.exception("policy %s failed to forget %s", policy, worker_id)
