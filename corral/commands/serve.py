"""Run the control plane alone: the ext_proc and ADS services on one gRPC port, the
admin API and Prometheus metrics on one HTTP port. Point an Envoy at it with the
bootstrap from `corral envoy-config`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from corral.commands._checks import check_settings
from corral.config import load_config
from corral.observability.logs import configure_logging


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, required=True, help="YAML configuration file"
    )
    parser.add_argument(
        "--log-level",
        choices=["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"],
        help="overrides logging.level of the configuration",
    )
    parser.add_argument(
        "--log-json", action="store_true", help="one JSON object per log line"
    )


def run(args: argparse.Namespace) -> int:
    from corral.server import run_event_loop, serve

    settings = load_config(args.config)
    check_settings(settings)
    configure_logging(
        args.log_level or settings.logging.level,
        json_format=args.log_json or settings.logging.json_format,
    )
    try:
        run_event_loop(serve(settings))
    except OSError as exc:
        print(f"corral serve: {exc}", file=sys.stderr)
        return 1
    return 0
