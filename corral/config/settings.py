"""The configuration file, as typed settings validated once at start-up.

One YAML file describes the whole gateway. ``load_config`` reads it, applies
``CORRAL_*`` environment overrides for secrets, and validates every key; a bad
file raises ``ConfigError`` naming the key and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral.errors import ConfigError

ENV_PREFIX = "CORRAL_"

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_GRPC_PORT = 18000
DEFAULT_ADMIN_PORT = 18001
DEFAULT_LISTEN_PORT = 8080
DEFAULT_ENVOY_ADMIN_PORT = 9901


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class PolicyConfig(_Strict):
    """A routing policy by registered name, with its parameters."""

    name: str = "cache_aware"
    params: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    """One model pool: the workers that serve ``name`` and how to route to them."""

    name: str = Field(min_length=1)
    tokenizer: str = "builtin"
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    aliases: list[str] = Field(default_factory=list)


class StaticWorker(_Strict):
    url: str
    model: str | None = None
    models: list[str] = Field(default_factory=list)
    role: Literal["regular", "prefill", "decode"] = "regular"
    labels: dict[str, str] = Field(default_factory=dict)
    bootstrap_port: int | None = None


class FileDiscoveryConfig(_Strict):
    path: Path
    poll_interval_s: float = Field(default=1.0, gt=0)


class KubernetesSelector(_Strict):
    label_selector: str
    model: str | None = None
    role: Literal["regular", "prefill", "decode"] = "regular"
    port: int | None = None


class KubernetesDiscoveryConfig(_Strict):
    namespace: str | None = None
    """One namespace, or every namespace when unset."""
    selectors: list[KubernetesSelector] = Field(default_factory=list)
    port: int = 8000
    port_annotation: str = "corral.io/port"
    model_label: str = "corral.io/model"
    model_annotation: str = "corral.io/model"
    role_label: str = "llm-d.ai/role"
    bootstrap_port_annotation: str = "sglang.ai/bootstrap-port"
    kubeconfig: Path | None = None
    api_server: str | None = None
    require_port_annotation: bool = False
    """Skip (with a warning) pods without ``port_annotation`` instead of using the
    selector's or the default port."""


class DiscoveryConfig(_Strict):
    file: FileDiscoveryConfig | None = None
    kubernetes: KubernetesDiscoveryConfig | None = None


class HealthCheckConfig(_Strict):
    interval_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    failure_threshold: int = Field(default=3, ge=1)
    success_threshold: int = Field(default=1, ge=1)
    path: str = "/health"
    drain_timeout_s: float = Field(default=30.0, ge=0)


class LoadMetricsConfig(_Strict):
    """Polling of the engines' own Prometheus metrics (vLLM or SGLang names)."""

    enabled: bool = True
    interval_s: float = Field(default=1.0, gt=0)
    stale_after_s: float = Field(default=5.0, gt=0)


class RetryConfig(_Strict):
    attempts: int = Field(default=3, ge=1, le=10)
    """Total tries, the first included."""
    retry_on_statuses: list[int] = Field(default_factory=lambda: [502, 503, 504])
    per_try_timeout_s: float | None = None
    budget_percent: float = Field(default=50.0, gt=0, le=100)


class TimeoutConfig(_Strict):
    connect_s: float = Field(default=2.0, gt=0)
    first_byte_s: float | None = Field(default=None, gt=0)
    idle_s: float = Field(default=300.0, gt=0)
    total_s: float | None = Field(default=None, gt=0)


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)


class AdmissionConfig(_Strict):
    max_concurrent: int | None = Field(default=None, ge=1)
    """Requests in flight per pool before new ones queue; unlimited when unset."""
    queue_size: int = Field(default=100, ge=0)
    queue_timeout_s: float = Field(default=30.0, gt=0)
    rate_limit_requests_per_s: float | None = Field(default=None, gt=0)
    """Sustained requests per second per API key or tenant; unlimited when unset."""
    rate_limit_request_burst: int | None = Field(default=None, ge=1)
    """Requests a key may send at once; default: one second's worth, at least 1."""
    rate_limit_tokens_per_min: float | None = Field(default=None, gt=0)
    """Prompt tokens per minute per API key or tenant; unlimited when unset."""
    rate_limit_token_burst: int | None = Field(default=None, ge=1)
    """Prompt tokens a key may spend at once; defaults to one minute's worth."""
    tenant_header: str | None = None
    """Header naming the tenant for rate limits; unset: the hashed bearer token."""
    shed_waiting_threshold: float | None = Field(default=None, gt=0)
    """Shed (503) when every ready worker reports at least this many waiting."""
    shed_kv_usage_threshold: float | None = Field(default=None, gt=0, le=1)
    """Shed (503) when every ready worker reports at least this KV cache usage."""


class CircuitBreakerConfig(_Strict):
    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1)
    success_threshold: int = Field(default=2, ge=1)
    open_duration_s: float = Field(default=10.0, gt=0)
    half_open_max_requests: int = Field(default=1, ge=1)
    """Probe requests in flight at once while half-open."""


class EnvoyConfig(_Strict):
    listen: Address = Field(default_factory=lambda: Address(port=DEFAULT_LISTEN_PORT))
    admin: Address = Field(
        default_factory=lambda: Address(port=DEFAULT_ENVOY_ADMIN_PORT)
    )
    worker_protocol: Literal["http1", "h2c"] = "http1"
    failure_mode_allow: bool = True
    """Fail open: if ext_proc is unreachable, Envoy's own load balancer routes."""
    node_id: str = "corral-envoy"
    ads_delta: bool = False
    """Envoy subscribes with incremental (Delta) xDS instead of state of the world."""
    control_plane: Address | None = None
    """Where Envoy dials Corral's gRPC server, when that differs from ``grpc``
    (Corral listening on 0.0.0.0 in a container that Envoy reaches by name)."""


class LoggingConfig(_Strict):
    level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(default=False, alias="json")
    access_log: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Settings(_Strict):
    """The whole configuration file."""

    grpc: Address = Field(default_factory=lambda: Address(port=DEFAULT_GRPC_PORT))
    """ext_proc and ADS services, one gRPC server."""
    admin: Address = Field(default_factory=lambda: Address(port=DEFAULT_ADMIN_PORT))
    """Admin API and Prometheus metrics, one HTTP server."""
    admin_token: str | None = None
    envoy: EnvoyConfig = Field(default_factory=EnvoyConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    default_model: str | None = None
    workers: list[StaticWorker] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    load_metrics: LoadMetricsConfig = Field(default_factory=LoadMetricsConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for model in models:
            for name in (model.name, *model.aliases):
                if name in seen:
                    raise ValueError(f"model name {name!r} appears twice")
                seen.add(name)
        return models

    def model(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if name == model.name or name in model.aliases:
                return model
        return None


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ())) or "(top level)"
    return f"{location}: {error.get('msg', 'invalid')}"


def _drop_nulls(value: Any) -> Any:
    """An empty YAML section (``discovery:`` with every line commented) means
    "defaults", not "null"; drop null values so defaults apply."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _env_overrides(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    token = environ.get(f"{ENV_PREFIX}ADMIN_TOKEN")
    if token:
        data["admin_token"] = token
    return data


def parse_settings(data: Any, *, environ: dict[str, str] | None = None) -> Settings:
    """Validate an already-parsed document (a dict from YAML or JSON)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            "configuration must be a mapping at the top level, "
            f"got {type(data).__name__}"
        )
    data = _env_overrides(
        _drop_nulls(data), dict(os.environ if environ is None else environ)
    )
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())  # type: ignore[arg-type]
        raise ConfigError(f"invalid configuration: {problems}") from None


def load_config(
    path: str | Path | None, *, environ: dict[str, str] | None = None
) -> Settings:
    """Read and validate a YAML configuration file (``None``: all defaults)."""
    if path is None:
        return parse_settings({}, environ=environ)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_settings(data, environ=environ)
