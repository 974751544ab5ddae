"""Print the Envoy bootstrap for a Corral configuration (YAML or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from corral.commands._checks import check_settings
from corral.config.settings import load_config
from corral.xds.bootstrap import render_bootstrap


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help="Corral configuration file (default: all defaults)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="write here instead of standard output",
    )
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")
    parser.add_argument(
        "--delta",
        action="store_true",
        default=None,
        help="subscribe with incremental xDS (DELTA_GRPC)",
    )


def render_text(data: dict[str, object], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return str(yaml.safe_dump(data, sort_keys=False, width=88))


def run(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    check_settings(settings)
    text = render_text(render_bootstrap(settings, delta=args.delta), args.format)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0
