"""Run the local stack in the foreground: Envoy, the control plane and, unless the
configuration names workers, a few simulated workers. Ctrl-C stops everything.

Without --config, the stack serves one model, corral-demo, with Corral's builtin
tokenizer on simulated vLLM workers, all on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from corral.commands._checks import check_settings
from corral.commands._processes import Child, corral_argv, wait_http_ok
from corral.config import ModelConfig, Settings, load_config, parse_settings
from corral.config.settings import ENV_PREFIX
from corral.envoy_binary import find_envoy
from corral.observability.logs import configure_logging
from corral.xds.bootstrap import render_bootstrap

logger = logging.getLogger(__name__)

DEMO_MODEL = "corral-demo"
DEFAULT_SIM_WORKERS = 3
DEFAULT_SIM_PORT = 8001
STARTUP_TIMEOUT_S = 60.0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.add_argument(
        "--workers",
        type=_positive,
        default=DEFAULT_SIM_WORKERS,
        help="simulated workers to start when the configuration names none "
        f"(default {DEFAULT_SIM_WORKERS})",
    )
    parser.add_argument(
        "--sim-port",
        type=int,
        default=DEFAULT_SIM_PORT,
        help=f"first port of the simulated workers (default {DEFAULT_SIM_PORT})",
    )
    parser.add_argument(
        "--sim-time-scale",
        type=float,
        default=1.0,
        help="speed factor of simulated time (0.1 = ten times faster)",
    )
    parser.add_argument(
        "--sim-max-model-len",
        type=int,
        default=131072,
        help="context length of the simulated workers, in tokens (default 131072)",
    )
    parser.add_argument("--port", type=int, help="gateway port (overrides the config)")
    parser.add_argument(
        "--log-dir",
        type=Path,
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
    return (
        not settings.workers
        and settings.discovery.file is None
        and (settings.discovery.kubernetes is None)
    )


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As servers bind: a port left in TIME_WAIT by the last run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _check_ports(settings: Settings, sim_ports: range) -> None:
    """Refuse to start over someone else's listener: a health check answered by
    another process would make the stack look ready and route to strangers."""
    wanted = [
        ("gateway", settings.envoy.listen.host, settings.envoy.listen.port),
        ("envoy admin", settings.envoy.admin.host, settings.envoy.admin.port),
        ("control plane gRPC", settings.grpc.host, settings.grpc.port),
        ("admin API", settings.admin.host, settings.admin.port),
        *(("simulated worker", "127.0.0.1", port) for port in sim_ports),
    ]
    busy = [
        f"{what} {host}:{port}"
        for what, host, port in wanted
        if port and _port_in_use(host, port)
    ]
    if busy:
        raise RuntimeError(
            "ports already in use: "
            + ", ".join(busy)
            + " (choose others with --port, --sim-port or --config)"
        )


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _print_banner(settings: Settings, log_dir: Path) -> None:
    admin = f"http://{settings.admin}"
    print(f"Corral gateway:  http://{settings.envoy.listen}/v1", flush=True)
    print(f"  admin API:     {admin}/workers", flush=True)
    print(f"  metrics:       {admin}/metrics", flush=True)
    print(f"  envoy admin:   http://{settings.envoy.admin}", flush=True)
    for worker in settings.workers:
        print(f"  worker:        {worker.url} ({worker.model})", flush=True)
    print(f"  logs:          {log_dir}", flush=True)
    print("Press Ctrl-C to stop.", flush=True)


def _supervise(envoy: Child, serve: Child, others: list[Child], log_dir: Path) -> int:
    """Watch the children until Envoy exits (the gateway is gone: stop) or a
    signal arrives. A simulated worker that exits stays down, as a crashed
    engine would (health checks take it out of rotation). The control plane is
    restarted: meanwhile Envoy keeps routing within each pool (fail-open)."""
    reported: set[int] = set()
    while True:
        if envoy.exited() is not None:
            print(
                f"corral up: envoy exited with status {envoy.exited()}; stopping "
                f"(see {log_dir})",
                file=sys.stderr,
            )
            return 1
        status = serve.exited()
        if status is not None:
            print(
                f"corral up: control plane exited with status {status}; restarting "
                "(Envoy keeps routing meanwhile)",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(min(5.0, 0.5 * 2 ** min(serve.restarts, 4)))
            serve.restart()
        for child in others:
            if child.exited() is not None and child.pid not in reported:
                reported.add(child.pid)
                print(
                    f"corral up: {child.name} exited with status {child.exited()}",
                    file=sys.stderr,
                    flush=True,
                )
        time.sleep(0.2)


def run(args: argparse.Namespace) -> int:
    configure_logging("INFO")
    settings = load_config(args.config)
    check_settings(settings)
    data = _with_overrides(settings, args)
    # Secrets travel to the control plane in its environment, never on disk.
    token = data.pop("admin_token", None)
    env = dict(os.environ)
    if token:
        env[f"{ENV_PREFIX}ADMIN_TOKEN"] = token
    workdir = Path(tempfile.mkdtemp(prefix="corral-up-"))
    log_dir = args.log_dir or workdir
    log_dir.mkdir(parents=True, exist_ok=True)
    sim_ports = (
        range(args.sim_port, args.sim_port + max(1, args.workers))
        if _needs_simulated_workers(settings)
        else range(0)
    )
    children: list[Child] = []
    previous = {
        sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        _check_ports(parse_settings(data, environ={}), sim_ports)
        sims: list[Child] = []
        if sim_ports:
            model = data["models"][0]
            for port in sim_ports:
                sims.append(
                    Child(
                        f"simulated worker 127.0.0.1:{port}",
                        corral_argv(
                            "sim",
                            "--port",
                            str(port),
                            "--model",
                            model["name"],
                            "--tokenizer",
                            model["tokenizer"],
                            "--time-scale",
                            str(args.sim_time_scale),
                            "--max-model-len",
                            str(args.sim_max_model_len),
                        ),
                        log_dir / f"sim-{port}.log",
                    )
                )
            children.extend(sims)
            data["workers"] = [
                {"url": f"http://127.0.0.1:{port}", "model": model["name"]}
                for port in sim_ports
            ]
            for port, sim in zip(sim_ports, sims, strict=True):
                wait_http_ok(
                    f"http://127.0.0.1:{port}/health",
                    timeout_s=STARTUP_TIMEOUT_S,
                    child=sim,
                )
        effective = parse_settings(data, environ={})
        config_path = workdir / "corral.yaml"
        config_path.touch(mode=0o600)
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))

        serve = Child(
            "control plane",
            corral_argv("serve", "--config", str(config_path)),
            log_dir / "corral.log",
            env=env,
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
                str(find_envoy()),
                "-c",
                str(bootstrap_path),
                "--use-dynamic-base-id",
                "-l",
                "warning",
            ],
            log_dir / "envoy.log",
        )
        children.append(envoy)
        envoy_admin = f"http://{effective.envoy.admin}"
        wait_http_ok(f"{envoy_admin}/ready", timeout_s=STARTUP_TIMEOUT_S, child=envoy)
        wait_http_ok(f"{admin}/readyz", timeout_s=STARTUP_TIMEOUT_S, child=serve)

        _print_banner(effective, log_dir)
        return _supervise(envoy, serve, sims, log_dir)
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
        if args.log_dir is not None:
            # Logs went elsewhere: the generated files have no use left.
            shutil.rmtree(workdir, ignore_errors=True)
        print("corral up: stopped", file=sys.stderr, flush=True)
