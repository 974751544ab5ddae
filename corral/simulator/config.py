"""Parameters of one simulated worker: identity, capacity, cost model, faults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from corral.errors import ConfigError, InvalidRequest

Engine = Literal["vllm", "sglang"]
ENGINES: tuple[str, ...] = ("vllm", "sglang")

# Defaults sized like a 7-8B model on one H100 (the reference profile of
# llm-d-inference-sim, docs/latency-profiles.md: TTFT 60-120 ms for a 256-token
# prompt, 10-15 ms between tokens). 256 uncached tokens cost
# 0.035 + 256 * 0.00016 = 76 ms; a full cache hit recomputes one token (35 ms).
DEFAULT_PREFILL_BASE_S = 0.035
DEFAULT_PREFILL_PER_TOKEN_S = 0.00016
DEFAULT_DECODE_BASE_S = 0.011
DEFAULT_DECODE_PER_SEQ_S = 0.00015
DEFAULT_BLOCK_SIZE = 16
# Llama-3-8B in bf16 on an 80 GB card at 0.9 utilisation holds about half a
# million tokens of KV cache: 31,250 blocks of 16.
DEFAULT_NUM_BLOCKS = 31_250
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_MODEL_LEN = 8192


@dataclass
class FaultConfig:
    """Faults a worker injects; all off by default, changeable at run time.

    ``error_rate`` (0..1) answers that share of generation requests with
    ``error_status``; ``fail_after`` answers every generation request after the
    first N with ``error_status``; ``hang`` accepts requests and never answers;
    ``slow_start_s`` keeps ``/health`` at 503 for that long after start;
    ``drop_after_chunks`` closes the connection of a streamed answer after K
    chunks; ``exit_after`` ends the process (exit status 1) when the Nth
    generation request arrives (one worker per process only).
    """

    error_rate: float = 0.0
    error_status: int = 503
    fail_after: int | None = None
    hang: bool = False
    slow_start_s: float = 0.0
    drop_after_chunks: int | None = None
    exit_after: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a JSON object of changes; raises ``InvalidRequest`` on bad ones."""
        known = {f.name: f for f in dataclasses.fields(self)}
        staged = dataclasses.replace(self)
        for key, value in changes.items():
            if key not in known:
                raise InvalidRequest(f"unknown fault {key!r}", param=key)
            setattr(staged, key, _coerce_fault(key, value))
        staged.validate()
        for key in changes:
            setattr(self, key, getattr(staged, key))

    def validate(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise InvalidRequest("error_rate must be within [0, 1]", param="error_rate")
        if not 400 <= self.error_status <= 599:
            raise InvalidRequest(
                "error_status must be a 4xx or 5xx status", param="error_status"
            )
        if self.slow_start_s < 0:
            raise InvalidRequest("slow_start_s must be >= 0", param="slow_start_s")
        for name in ("fail_after", "drop_after_chunks", "exit_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidRequest(f"{name} must be >= 0", param=name)


def _coerce_fault(key: str, value: Any) -> Any:
    if key == "hang":
        if not isinstance(value, bool):
            raise InvalidRequest("hang must be a boolean", param=key)
        return value
    if key in ("error_rate", "slow_start_s"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"{key} must be a number", param=key)
        return float(value)
    if value is None and key in ("fail_after", "drop_after_chunks", "exit_after"):
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{key} must be an integer", param=key)
    return value


@dataclass
class SimConfig:
    """Everything one simulated worker needs; every time is in simulated seconds.

    Wall-clock waits are simulated seconds times ``time_scale`` (0.1 runs ten
    times faster); metrics report wall-clock seconds, as a real engine would.
    Port 0 asks the system for a free port.
    """

    model: str = "sim-model"
    engine: Engine = "vllm"
    host: str = "127.0.0.1"
    port: int = 8000
    worker_id: str | None = None
    tokenizer: str = "builtin"
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    block_size: int = DEFAULT_BLOCK_SIZE
    num_blocks: int = DEFAULT_NUM_BLOCKS
    prefill_base_s: float = DEFAULT_PREFILL_BASE_S
    prefill_per_token_s: float = DEFAULT_PREFILL_PER_TOKEN_S
    decode_base_s: float = DEFAULT_DECODE_BASE_S
    decode_per_seq_s: float = DEFAULT_DECODE_PER_SEQ_S
    # Length of an answer when the request does not bound it (the simulated
    # end-of-sequence token comes after this many tokens, drawn per request).
    min_output_tokens: int = 16
    max_output_tokens: int = 128
    time_scale: float = 1.0
    faults: FaultConfig = field(default_factory=FaultConfig)

    def validate(self) -> None:
        """Raise ``ConfigError`` when a parameter cannot work."""
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {ENGINES}, not {self.engine!r}")
        if not self.model:
            raise ConfigError("a model name is required")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range")
        positive = (
            "max_model_len",
            "max_num_seqs",
            "block_size",
            "num_blocks",
            "max_output_tokens",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if not 0 <= self.min_output_tokens <= self.max_output_tokens:
            raise ConfigError("need 0 <= min_output_tokens <= max_output_tokens")
        if self.time_scale <= 0:
            raise ConfigError("time_scale must be > 0")
        for name in (
            "prefill_base_s",
            "prefill_per_token_s",
            "decode_base_s",
            "decode_per_seq_s",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        try:
            self.faults.validate()
        except InvalidRequest as exc:
            raise ConfigError(f"fault setting: {exc.message}") from exc
