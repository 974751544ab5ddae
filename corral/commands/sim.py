"""Run simulated vLLM or SGLang workers (one per process by default, or
several on consecutive ports with --workers)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging

from corral.errors import ConfigError
from corral.observability.logs import configure_logging
from corral.simulator import FaultConfig, SimConfig, run_workers

logger = logging.getLogger(__name__)

_DEFAULTS = SimConfig()
_FAULTS = FaultConfig()

# (flag, SimConfig field, type, help); every cost-model parameter has a flag.
_PARAMETERS: tuple[tuple[str, str, type, str], ...] = (
    ("--max-model-len", "max_model_len", int, "context window, tokens"),
    ("--max-num-seqs", "max_num_seqs", int, "requests running at once; others wait"),
    ("--block-size", "block_size", int, "tokens per KV cache block"),
    ("--num-blocks", "num_blocks", int, "KV cache size, blocks"),
    ("--prefill-base", "prefill_base_s", float, "fixed prefill cost, seconds"),
    (
        "--prefill-per-token",
        "prefill_per_token_s",
        float,
        "prefill cost per uncached prompt token, seconds",
    ),
    ("--decode-base", "decode_base_s", float, "decode step cost at batch 0, seconds"),
    (
        "--decode-per-seq",
        "decode_per_seq_s",
        float,
        "added decode step cost per sequence in the batch, seconds",
    ),
    (
        "--min-output-tokens",
        "min_output_tokens",
        int,
        "shortest answer when max_tokens does not bound it",
    ),
    (
        "--max-output-tokens",
        "max_output_tokens",
        int,
        "longest answer when max_tokens does not bound it",
    ),
    (
        "--time-scale",
        "time_scale",
        float,
        "multiplies every simulated time (0.1 runs ten times faster)",
    ),
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=_DEFAULTS.model, help="served model name")
    parser.add_argument(
        "--engine",
        choices=("vllm", "sglang"),
        default="vllm",
        help="which engine's API and metrics to speak",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument(
        "--port", type=int, default=_DEFAULTS.port, help="port of the first worker"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="workers in this process, on consecutive ports",
    )
    parser.add_argument(
        "--worker-id",
        default=None,
        help="id in the x-corral-sim-worker header (default "
        "host:port); with --workers N, '-<i>' is appended",
    )
    parser.add_argument(
        "--tokenizer",
        default=_DEFAULTS.tokenizer,
        help="'builtin', a tokenizer folder or tokenizer.json",
    )
    for flag, name, kind, text in _PARAMETERS:
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            default=getattr(_DEFAULTS, name),
            help=f"{text} (default %(default)s)",
        )
    faults = parser.add_argument_group("fault injection (also POST /sim/faults)")
    faults.add_argument(
        "--error-rate",
        type=float,
        default=_FAULTS.error_rate,
        help="share of requests answered with --error-status",
    )
    faults.add_argument("--error-status", type=int, default=_FAULTS.error_status)
    faults.add_argument(
        "--fail-after",
        type=int,
        default=None,
        help="answer every request after the first N with an error",
    )
    faults.add_argument(
        "--hang", action="store_true", help="accept requests and never answer"
    )
    faults.add_argument(
        "--slow-start",
        dest="slow_start_s",
        type=float,
        default=0.0,
        help="seconds during which /health answers 503",
    )
    faults.add_argument(
        "--drop-after-chunks",
        type=int,
        default=None,
        help="cut streamed answers after K chunks",
    )
    faults.add_argument(
        "--exit-after",
        type=int,
        default=None,
        help="exit the process when the Nth request arrives "
        "(one worker per process only)",
    )
    parser.add_argument("--log-level", default="INFO")


def build_configs(args: argparse.Namespace) -> list[SimConfig]:
    """One ``SimConfig`` per worker from the parsed command line."""
    if args.workers < 1:
        raise ConfigError("--workers must be >= 1")
    if args.workers > 1 and args.exit_after is not None:
        raise ConfigError("--exit-after needs one worker per process")
    if args.workers > 1 and args.port == 0:
        raise ConfigError("--workers N needs a fixed --port (consecutive ports)")
    configs = []
    for i in range(args.workers):
        faults = FaultConfig(
            error_rate=args.error_rate,
            error_status=args.error_status,
            fail_after=args.fail_after,
            hang=args.hang,
            slow_start_s=args.slow_start_s,
            drop_after_chunks=args.drop_after_chunks,
            exit_after=args.exit_after,
        )
        worker_id = args.worker_id
        if worker_id and args.workers > 1:
            worker_id = f"{worker_id}-{i}"
        config = SimConfig(
            model=args.model,
            engine=args.engine,
            host=args.host,
            port=args.port + i,
            worker_id=worker_id,
            tokenizer=args.tokenizer,
            faults=faults,
            **{name: getattr(args, name) for _, name, _, _ in _PARAMETERS},
        )
        config.validate()
        configs.append(config)
    return configs


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    configs = build_configs(args)
    logger.debug("simulating %s", [dataclasses.asdict(c) for c in configs])
    try:
        asyncio.run(run_workers(configs))
    except OSError as exc:
        raise ConfigError(f"cannot serve: {exc}") from exc
    return 0
