"""The ``corral`` command: one subcommand per module in ``corral.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from corral import __version__
from corral.errors import ConfigError

# name -> (module under corral.commands, one-line help)
SUBCOMMANDS = {
    "up": ("up", "run the local stack (Envoy, control plane, simulated workers)"),
    "serve": ("serve", "run the control plane alone (ext_proc, ADS, admin API)"),
    "sim": ("sim", "run simulated vLLM or SGLang workers"),
    "envoy-config": ("envoy_config", "print the Envoy bootstrap for a configuration"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Corral: an LLM inference gateway on Envoy.",
    )
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(f"corral.commands.{module_name}")
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__)
        module.configure_parser(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"corral {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
