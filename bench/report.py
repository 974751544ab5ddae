"""The Markdown report and its PNG plots, from the raw results of one run.

Figures of repeated runs are combined by taking the median of each figure over
the repeats. Latency added by a gateway is its median (or p90) end-to-end
latency on the ``short`` workload minus that of ``direct``. Ratios are
``contender / reference`` so a ratio below 1 means the contender is lower.
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

OURS = "corral-cache_aware"
THEIRS = "smg-cache_aware"
ROUND_ROBINS = ("envoy-rr", "smg-round_robin", "corral-round_robin")
CACHE_WORKLOADS = ("shared_prefix", "multi_turn")
ADDED_WORKLOAD = "short"

Table = dict[tuple[str, str], dict[str, Any]]


def aggregate(runs: Iterable[dict[str, Any]]) -> Table:
    """(workload, contender) -> median over repeats of each summary figure."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    errors: dict[tuple[str, str], list[str]] = defaultdict(list)
    for run in runs:
        key = (run["workload"], run["contender"])
        if "summary" in run:
            grouped[key].append(run["summary"])
        if run.get("error"):
            errors[key].append(run["error"])
    table: Table = {}
    for key in set(grouped) | set(errors):
        summaries = grouped.get(key, [])
        merged: dict[str, Any] = {"repeats": len(summaries)}
        fields = summaries[0].keys() if summaries else ()
        for name in fields:
            values = [s[name] for s in summaries if isinstance(s[name], int | float)]
            if values and not isinstance(summaries[0][name], str):
                merged[name] = statistics.median(values)
            else:
                merged[name] = next((s[name] for s in summaries if s[name]), None)
        merged["error"] = errors[key][0] if errors.get(key) else ""
        table[key] = merged
    return table


def added_latency(table: Table, field: str = "e2e_p50_ms") -> dict[str, float]:
    """Contender -> its ``field`` on the short workload minus direct's."""
    base = table.get((ADDED_WORKLOAD, "direct"), {}).get(field)
    if base is None:
        return {}
    out = {}
    for (workload, contender), row in table.items():
        if workload == ADDED_WORKLOAD and contender != "direct" and row.get(field):
            out[contender] = row[field] - base
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _f(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _get(table: Table, workload: str, contender: str, field: str) -> float | None:
    value = table.get((workload, contender), {}).get(field)
    return value if isinstance(value, int | float) else None


def goals(table: Table) -> list[str]:
    """Sentences on each stated goal: reached, missed, or not measurable."""
    lines = []
    for workload in CACHE_WORKLOADS:
        ours = _get(table, workload, OURS, "ttft_p50_ms")
        theirs = _get(table, workload, THEIRS, "ttft_p50_ms")
        hit_ours = _get(table, workload, OURS, "hit_rate")
        hit_theirs = _get(table, workload, THEIRS, "hit_rate")
        if ours is None or theirs is None:
            lines.append(f"- **{workload}**: not measurable (a run of {OURS} or "
                         f"{THEIRS} is missing; see errors below).")
            continue
        verdict = "reached" if ours < theirs and (
            hit_ours is not None and hit_theirs is not None and hit_ours > hit_theirs
        ) else "not reached"
        lines.append(
            f"- **{workload}**, {OURS} vs {THEIRS}: TTFT p50 {_f(ours)} ms vs "
            f"{_f(theirs)} ms (ratio {_x(ratio(ours, theirs))}), hit rate "
            f"{_pct(hit_ours)} vs {_pct(hit_theirs)}: goal **{verdict}**."
        )
        for rr in ROUND_ROBINS:
            other = _get(table, workload, rr, "ttft_p50_ms")
            if other is not None:
                lines.append(
                    f"  - vs {rr}: TTFT p50 ratio {_x(ratio(ours, other))}, hit "
                    f"rate {_pct(hit_ours)} vs "
                    f"{_pct(_get(table, workload, rr, 'hit_rate'))}."
                )
    added = added_latency(table)
    ours_add, theirs_add = added.get(OURS), added.get(THEIRS)
    if ours_add is None or theirs_add is None:
        lines.append("- **added latency**: not measurable (short-workload runs "
                     "missing).")
    else:
        gap = ours_add - theirs_add
        verdict = "reached" if gap <= 1.0 else "not reached"
        lines.append(
            f"- **added latency at p50** (short workload, over direct): {OURS} "
            f"{ours_add:+.2f} ms, {THEIRS} {theirs_add:+.2f} ms, gap {gap:+.2f} ms "
            f"(goal: within 1 ms): **{verdict}**."
        )
    return lines


# (field, label, lower is better)
_COMPARED = (
    ("ttft_p50_ms", "TTFT p50", True),
    ("ttft_p99_ms", "TTFT p99", True),
    ("itl_p50_ms", "ITL p50", True),
    ("itl_p99_ms", "ITL p99", True),
    ("e2e_p50_ms", "E2E p50", True),
    ("e2e_p99_ms", "E2E p99", True),
    ("req_per_s", "requests/s", False),
    ("hit_rate", "hit rate", False),
    ("cpu_ms_per_req", "gateway CPU ms/request", True),
    ("peak_rss_mb", "gateway RSS", True),
)


def losses(table: Table, workloads: Iterable[str], margin: float = 0.05) -> list[str]:
    """Where corral-cache_aware is worse than smg-cache_aware by over ``margin``."""
    lines = []
    for workload in workloads:
        for field, label, lower_better in _COMPARED:
            ours = _get(table, workload, OURS, field)
            theirs = _get(table, workload, THEIRS, field)
            if ours is None or theirs is None or theirs == 0:
                continue
            worse = ours > theirs * (1 + margin) if lower_better else (
                ours < theirs * (1 - margin))
            if worse:
                lines.append(f"- {workload}: {label} {_f(ours, 2)} vs {_f(theirs, 2)} "
                             f"({_x(ratio(ours, theirs))})")
    return lines


def _timer_lines(runs: list[dict[str, Any]], workloads: list[str]) -> list[str]:
    """Mean time ``corral serve`` spent tokenizing and picking, per workload."""
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        if run["contender"] != OURS:
            continue
        for name, value in (run.get("gateway_timers_ms") or {}).items():
            cells[(run["workload"], name)].append(value)
    if not cells:
        return []
    lines = [
        f"## Inside corral serve ({OURS})",
        "",
        "Mean milliseconds per request from Corral's own histograms "
        "(`corral_tokenize_seconds`, `corral_routing_decision_seconds`); the "
        "rest of its added latency is the ext_proc exchange with Envoy.",
        "",
        "| workload | render + tokenize ms | routing decision ms |",
        "|---|---|---|",
    ]
    for workload in workloads:
        tok = cells.get((workload, "tokenize"))
        dec = cells.get((workload, "decision"))
        lines.append(
            f"| {workload} | {_f(statistics.median(tok), 3) if tok else '-'} "
            f"| {_f(statistics.median(dec), 3) if dec else '-'} |"
        )
    return [*lines, ""]


def _loss_lines(table: Table, workloads: list[str]) -> list[str]:
    present = {c for _, c in table}
    if OURS not in present or THEIRS not in present:
        return [f"- not measurable: this run has no results for {OURS} or {THEIRS}."]
    return losses(table, workloads) or ["- nowhere in this run."]


def _workload_table(table: Table, workload: str, contenders: list[str]) -> list[str]:
    head = ("| contender | ok/sent | TTFT p50 | p90 | p99 | ITL p50 | p90 | E2E p50 "
            "| p99 | req/s | out tok/s | hit rate | CPU ms/req | RSS MB |")
    lines = [head, "|" + "---|" * 14]
    for name in contenders:
        row = table.get((workload, name))
        if row is None:
            continue
        if not row.get("repeats"):
            lines.append(f"| {name} | failed | " + "- | " * 12)
            continue
        sent = (row["requests"] or 0)
        lines.append(
            f"| {name} | {_f(row['ok'], 0)}/{_f(sent, 0)} | {_f(row['ttft_p50_ms'])} "
            f"| {_f(row['ttft_p90_ms'])} | {_f(row['ttft_p99_ms'])} "
            f"| {_f(row['itl_p50_ms'], 2)} | {_f(row['itl_p90_ms'], 2)} "
            f"| {_f(row['e2e_p50_ms'])} | {_f(row['e2e_p99_ms'])} "
            f"| {_f(row['req_per_s'], 2)} | {_f(row['out_tok_per_s'])} "
            f"| {_pct(row['hit_rate'])} | {_f(row['cpu_ms_per_req'], 2)} "
            f"| {_f(row['peak_rss_mb'], 0)} |"
        )
    return lines


def write_report(data: dict[str, Any], out_dir: Path) -> Path:
    """Write ``REPORT.md`` and the PNGs into ``out_dir``; return the report path."""
    from bench.plots import draw_all

    out_dir.mkdir(parents=True, exist_ok=True)
    table = aggregate(data["runs"])
    contenders: list[str] = data["contenders"]
    workloads = [w["name"] for w in data["workloads"]]
    images = draw_all(table, workloads, contenders, out_dir)
    machine = data["machine"]
    lines = [
        "# Corral benchmark report",
        "",
        f"Run {data['stamp']} ({'quick' if data['quick'] else 'full'} mode), "
        f"{data['workers']} simulated workers per gateway, {data['repeats']} "
        f"repeat(s), {data['elapsed_s'] / 60:.1f} minutes. Regenerate with "
        f"`python -m bench.run{' --quick' if data['quick'] else ''}"
        f"{' --repeats ' + str(data['repeats']) if data['repeats'] > 1 else ''}`.",
        "",
        "## Machine",
        "",
        "| item | value |",
        "|---|---|",
        *[f"| {k} | {_f(v)} |" for k, v in machine.items()],
        "",
        "Workers are `corral sim` processes at time scale 1 with the default "
        "H100-like cost model and the TinyLlama tokenizer; every gateway and the "
        "load generator share the machine's cores with them, so absolute numbers "
        "include contention a production setup would not have. Each contender "
        "gets freshly started workers (cold prefix caches) for each workload.",
        "",
        "## Workloads",
        "",
        *[f"- **{w['name']}**: {w['description']} ({w['requests']} requests)."
          for w in data["workloads"]],
        "",
        "## Goals",
        "",
        *goals(table),
        "",
        f"### Where {OURS} loses to {THEIRS} (worse by more than 5%)",
        "",
        *_loss_lines(table, workloads),
        "",
    ]
    added = added_latency(table)
    added90 = added_latency(table, "e2e_p90_ms")
    if added:
        lines += [
            "## Latency added over direct (short workload)",
            "",
            "| contender | added p50 ms | added p90 ms |",
            "|---|---|---|",
            *[f"| {name} | {added[name]:+.2f} | {_signed(added90.get(name))} |"
              for name in contenders if name in added],
            "",
            "Differences of a few tenths of a millisecond, and negative ones at "
            "p90, are within the run-to-run noise of a shared 2-core machine.",
            "",
        ]
    lines += _timer_lines(data["runs"], workloads)
    for workload in workloads:
        lines += [f"## {workload}", "", *_workload_table(table, workload, contenders),
                  ""]
        if workload in images:
            lines += [f"![{workload} TTFT]({images[workload]})", ""]
    for key in ("hit_rate", "added_latency", "cpu"):
        if key in images:
            lines += [f"![{key}]({images[key]})", ""]
    failed = [(k, row["error"]) for k, row in sorted(table.items()) if row["error"]]
    lines += ["## Errors", ""]
    lines += [f"- {w} / {c}: {err.splitlines()[0][:300]}" for (w, c), err in failed]
    lines += [] if failed else ["- none."]
    first_errors = [(k, row["first_error"]) for k, row in sorted(table.items())
                    if row.get("first_error")]
    lines += [f"- {w} / {c}: first failed request: {err}"
              for (w, c), err in first_errors]
    if data.get("skipped_runs"):
        lines += [f"- {data['skipped_runs']} runs not started (time budget)."]
    lines += [
        "",
        "## How to read this",
        "",
        "TTFT is the client-side time to the first streamed content chunk; ITL the "
        "gap between content chunks; E2E the time to the end of the answer. Hit "
        "rate is the workers' prefix-cache hits over queried tokens, a delta of "
        "their `/metrics` counters over the run, summed across workers. CPU ms per "
        "request and RSS cover the gateway's processes only (Envoy plus `corral "
        "serve`; the `smg` process tree; nothing for direct), read from /proc. "
        "`direct` sends everything to one worker, so its figures on loaded "
        "workloads show one worker's capacity, not a gateway's quality.",
        "",
    ]
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(lines))
    return path
