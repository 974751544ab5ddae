"""Run every contender on every workload and write the report.

    python -m bench.run            # full run, up to ~20 minutes
    python -m bench.run --quick    # smoke check, a few minutes

Each (workload, contender) pair gets freshly started simulated workers, so no
contender inherits another's warm prefix cache, and a freshly started gateway.
With ``--repeats N`` the contender order rotates from one repeat to the next,
so slow drift of the machine does not always favour the same contender.
Everything binds 127.0.0.1; every process is stopped by its PID on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.client import run_workload
from bench.contenders import Contender, Fleet, FleetSpec, build_contenders, envoy_binary
from bench.machine import describe
from bench.procs import ResourceSampler
from bench.report import write_report
from bench.stats import (
    cache_counters,
    histogram_totals,
    hit_rate_delta,
    summarize,
    timer_means_ms,
)
from bench.workloads import Workload, build_workloads

logger = logging.getLogger("bench.run")

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO.parent / "shared" / "tokenizers" / "TinyLlama-1.1B-Chat-v1.0"
MODEL = "tinyllama"
# Long-prompt requests reach ~100K tokens plus the question and answer.
MAX_MODEL_LEN = 131_072


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small workloads for a smoke check")
    parser.add_argument("--workers", type=int, default=4,
                        help="simulated workers behind each gateway (default 4)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each pair, contender order rotated (default 1)")
    parser.add_argument("--contenders", nargs="+", metavar="NAME",
                        help="only these contenders (e.g. direct smg-cache_aware)")
    parser.add_argument("--workloads", nargs="+", metavar="NAME",
                        help="only these workloads (shared_prefix multi_turn short "
                        "long)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop starting new runs after this long "
                        "(default 8 quick, 25 full)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                        help="report folder (default bench/results)")
    return parser.parse_args(argv)


def _scrape(urls: list[str]) -> list[tuple[float, float] | None]:
    out: list[tuple[float, float] | None] = []
    for url in urls:
        try:
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
                out.append(cache_counters(response.read().decode()))
        except OSError as exc:
            logger.warning("cannot read %s/metrics: %s", url, exc)
            out.append(None)
    return out


def _gateway_timers(contender: Contender) -> dict[str, tuple[float, float]]:
    url = contender.metrics_url()
    if url is None:
        return {}
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return histogram_totals(response.read().decode())
    except OSError as exc:
        logger.warning("cannot read %s: %s", url, exc)
        return {}


def _reset_caches(urls: list[str]) -> None:
    """Empty the workers' prefix caches (the warm-up request left a few blocks)."""
    for url in urls:
        request = urllib.request.Request(f"{url}/sim/reset-cache", method="POST",
                                         data=b"")
        try:
            with urllib.request.urlopen(request, timeout=5):
                pass
        except OSError as exc:
            logger.warning("cannot reset the cache of %s: %s", url, exc)


async def _warm_up(base_url: str, deadline_s: float = 30.0) -> None:
    """Poll with a tiny request until the gateway routes one successfully."""
    import aiohttp

    body = {"model": MODEL, "messages": [{"role": "user", "content": "warm"}],
            "max_tokens": 1}
    deadline = time.monotonic() + deadline_s
    last = ""
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.post(f"{base_url}/v1/chat/completions", json=body,
                                     timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    if resp.status == 200:
                        return
                    last = f"{resp.status} {(await resp.text())[:200]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = str(exc)
            await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway at {base_url} never answered 200: {last}")


def run_pair(
    contender: Contender, workload: Workload, spec: FleetSpec, log_dir: Path, tag: str
) -> dict[str, Any]:
    fleet = Fleet(spec, log_dir, tag)
    record: dict[str, Any] = {"workload": workload.name, "contender": contender.name,
                              "family": contender.family, "policy": contender.policy}
    try:
        fleet.start()
        base_url = contender.start(fleet, tag)
        asyncio.run(_warm_up(base_url))
        _reset_caches(fleet.urls)
        before = _scrape(fleet.urls)
        timers_before = _gateway_timers(contender)
        with ResourceSampler(contender.processes) as sampler:
            run = asyncio.run(run_workload(base_url, MODEL, workload))
        after = _scrape(fleet.urls)
        record["gateway_timers_ms"] = timer_means_ms(
            timers_before, _gateway_timers(contender))
        summary = summarize(
            run.results, wall_s=run.wall_s, unsent=run.unsent,
            hit_rate=hit_rate_delta(before, after),
            cpu_s=sampler.cpu_s if contender.processes else None,
            peak_rss_bytes=sampler.peak_rss if contender.processes else None,
        )
        record["summary"] = summary.to_json()
        record["timed_out"] = run.timed_out
        record["worker_hits"] = [
            None if a is None or b is None else [a[0] - b[0], a[1] - b[1]]
            for b, a in zip(before, after, strict=True)
        ]
        logger.info(
            "%-22s %-13s ok=%d/%d ttft_p50=%s ms e2e_p50=%s ms hit=%s",
            contender.name, workload.name, summary.ok, workload.request_count,
            _fmt(summary.ttft_p50_ms), _fmt(summary.e2e_p50_ms),
            _fmt(summary.hit_rate, 3),
        )
    except Exception as exc:
        logger.error("%s on %s failed: %s", contender.name, workload.name, exc)
        record["error"] = str(exc)[:2000]
    finally:
        contender.stop()
        fleet.stop()
    return record


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    if not (TOKENIZER / "tokenizer.json").is_file():
        print(f"bench: the TinyLlama tokenizer is missing at {TOKENIZER}; the "
              f"benchmark needs it for the gateways and the workers", file=sys.stderr)
        return 2
    from corral.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(TOKENIZER))
    started = time.monotonic()
    budget_s = 60 * (args.max_minutes or (8 if args.quick else 25))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw_dir = args.out / "raw"
    log_dir = raw_dir / f"logs-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)

    workloads = build_workloads(tokenizer, quick=args.quick)
    if args.workloads:
        workloads = [w for w in workloads if w.name in set(args.workloads)]
    contenders = build_contenders(log_dir, TOKENIZER, names=args.contenders)
    spec = FleetSpec(count=args.workers, model=MODEL, tokenizer=TOKENIZER,
                     max_model_len=MAX_MODEL_LEN)
    logger.info("workloads: %s", ", ".join(
        f"{w.name} ({w.request_count} requests)" for w in workloads))
    logger.info("contenders: %s", ", ".join(c.name for c in contenders))

    records: list[dict[str, Any]] = []
    skipped = 0
    for repeat in range(args.repeats):
        shift = repeat % len(contenders)
        order = contenders[shift:] + contenders[:shift]
        for workload in workloads:
            for contender in order:
                if time.monotonic() - started > budget_s:
                    skipped += 1
                    continue
                tag = f"{workload.name}-r{repeat}"
                record = run_pair(contender, workload, spec, log_dir, tag)
                record["repeat"] = repeat
                records.append(record)
    if skipped:
        logger.warning("time budget reached: %d runs not started", skipped)

    data = {
        "stamp": stamp,
        "quick": args.quick,
        "workers": args.workers,
        "repeats": args.repeats,
        "elapsed_s": time.monotonic() - started,
        "skipped_runs": skipped,
        "machine": describe(envoy_binary(), shutil.which("smg")),
        "workloads": [{"name": w.name, "description": w.description,
                       "requests": w.request_count, "concurrency": w.concurrency}
                      for w in workloads],
        "contenders": [c.name for c in contenders],
        "runs": records,
    }
    raw_path = raw_dir / f"bench-{stamp}.json"
    raw_path.write_text(json.dumps(data, indent=1))
    report = write_report(data, args.out)
    logger.info("raw results: %s", raw_path)
    logger.info("report: %s", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
