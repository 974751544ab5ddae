"""Run the local stack in the foreground: Envoy, the control plane and, unless the
configuration names workers, a few simulated workers. Ctrl-C stops everything.

Without --config, the stack serves one model, corral-demo, with Corral's builtin
tokenizer on simulated vLLM workers, all on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from corral.commands._processes import Child, corral_argv, wait_http_ok
from corral.config import ModelConfig, Settings, load_config, parse_settings
from corral.envoy_binary import find_envoy
from corral.observability.logs import configure_logging
from corral.xds.bootstrap import render_bootstrap

logger = logging.getLogger(__name__)

DEMO_MODEL = "corral-demo"
DEFAULT_SIM_WORKERS = 3
DEFAULT_SIM_PORT = 8001
STARTUP_TIMEOUT_S = 60.0


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_SIM_WORKERS,
        help="simulated workers to start when the configuration names none "
        f"(default {DEFAULT_SIM_WORKERS})",
    )
    parser.add_argument(
        "--sim-port", type=int, default=DEFAULT_SIM_PORT,
        help=f"first port of the simulated workers (default {DEFAULT_SIM_PORT})",
    )
    parser.add_argument(
        "--sim-time-scale", type=float, default=1.0,
        help="speed factor of simulated time (0.1 = ten times faster)",
    )
    parser.add_argument(
        "--sim-max-model-len", type=int, default=131072,
        help="context length of the simulated workers, in tokens (default 131072)",
    )
    parser.add_argument("--port", type=int, help="gateway port (overrides the config)")
    parser.add_argument(
        "--log-dir", type=Path,
        help="write each process's output here (default: a temporary folder)",
    )


def _with_overrides(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    data = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    if args.port is not None:
        data["envoy"]["listen"]["port"] = args.port
    if not data["models"]:
        data["models"] = [ModelConfig(name=DEMO_MODEL).model_dump(mode="json")]
    return data


def _needs_simulated_workers(settings: Settings) -> bool:
    return not settings.workers and settings.discovery.file is None and (
        settings.discovery.kubernetes is None
    )


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    configure_logging("INFO")
    settings = load_config(args.config)
    data = _with_overrides(settings, args)
    workdir = Path(tempfile.mkdtemp(prefix="corral-up-"))
    log_dir = args.log_dir or workdir
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    previous = {
        sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        if _needs_simulated_workers(settings):
            model = data["models"][0]
            first, count = args.sim_port, max(1, args.workers)
            sims = Child(
                "simulated workers",
                corral_argv(
                    "sim", "--workers", str(count), "--port", str(first),
                    "--model", model["name"], "--tokenizer", model["tokenizer"],
                    "--time-scale", str(args.sim_time_scale),
                    "--max-model-len", str(args.sim_max_model_len),
                ),
                log_dir / "sim.log",
            )
            children.append(sims)
            data["workers"] = [
                {"url": f"http://127.0.0.1:{port}", "model": model["name"]}
                for port in range(first, first + count)
            ]
            for port in range(first, first + count):
                wait_http_ok(
                    f"http://127.0.0.1:{port}/health",
                    timeout_s=STARTUP_TIMEOUT_S, child=sims,
                )
        effective = parse_settings(data)
        config_path = workdir / "corral.yaml"
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))

        serve = Child(
            "control plane", corral_argv("serve", "--config", str(config_path)),
            log_dir / "corral.log",
        )
        children.append(serve)
        admin = f"http://{effective.admin}"
        wait_http_ok(f"{admin}/healthz", timeout_s=STARTUP_TIMEOUT_S, child=serve)

        bootstrap_path = workdir / "envoy.yaml"
        bootstrap_path.write_text(
            yaml.safe_dump(render_bootstrap(effective), sort_keys=False)
        )
        envoy = Child(
            "envoy",
            [
                str(find_envoy()), "-c", str(bootstrap_path),
                "--use-dynamic-base-id", "-l", "warning",
            ],
            log_dir / "envoy.log",
        )
        children.append(envoy)
        envoy_admin = f"http://{effective.envoy.admin}"
        wait_http_ok(f"{envoy_admin}/ready", timeout_s=STARTUP_TIMEOUT_S, child=envoy)
        wait_http_ok(f"{admin}/readyz", timeout_s=STARTUP_TIMEOUT_S, child=serve)

        gateway = f"http://{effective.envoy.listen}"
        print(f"Corral gateway:  {gateway}/v1", flush=True)
        print(f"  admin API:     {admin}/workers", flush=True)
        print(f"  metrics:       {admin}/metrics", flush=True)
        print(f"  envoy admin:   {envoy_admin}", flush=True)
        for worker in effective.workers:
            print(f"  worker:        {worker.url} ({worker.model})", flush=True)
        print(f"  logs:          {log_dir}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            for child in children:
                status = child.exited()
                if status is not None:
                    print(
                        f"corral up: {child.name} exited with status {status}; "
                        f"stopping (see {log_dir})",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.2)
    except _Stop:
        return 0
    except RuntimeError as exc:
        print(f"corral up: {exc} (logs in {log_dir})", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in reversed(children):
            child.stop()
        print("corral up: stopped", file=sys.stderr, flush=True)
