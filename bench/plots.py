"""PNG plots for the report (matplotlib, non-interactive Agg backend)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend above must be chosen first

logger = logging.getLogger(__name__)

Table = dict[tuple[str, str], dict[str, Any]]

_COLOURS = {"direct": "#888888", "envoy": "#4c72b0", "smg": "#dd8452",
            "corral": "#55a868"}


def _colour(name: str) -> str:
    return _COLOURS.get(name.split("-")[0], "#999999")


_SERIES_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")


def _bars(
    ax: Any,
    names: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    *,
    colour_by_series: bool = False,
) -> None:
    """Grouped bars: one group per name, one bar per series.

    Bars are coloured by gateway family (the first series solid, later ones
    lighter) unless ``colour_by_series``, where each series has its colour.
    """
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(names))]
        if colour_by_series:
            colours: Any = _SERIES_COLOURS[i % len(_SERIES_COLOURS)]
            alpha = 1.0
        else:
            colours = [_colour(n) for n in names]
            alpha = 1.0 if i == 0 else 0.55
        ax.bar(xs, values, width, label=label, alpha=alpha, color=colours,
               edgecolor="black", linewidth=0.4)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(
    table: Table, workloads: list[str], contenders: list[str], out_dir: Path
) -> dict[str, str]:
    """Draw every plot; returns name -> file name relative to ``out_dir``."""
    images: dict[str, str] = {}
    for workload in workloads:
        names = [c for c in contenders
                 if table.get((workload, c), {}).get("ttft_p50_ms") is not None]
        if not names:
            continue
        series = {
            q: [table[(workload, c)][f"ttft_{q}_ms"] or 0.0 for c in names]
            for q in ("p50", "p90", "p99")
        }
        fig, ax = plt.subplots(figsize=(8, 4))
        _bars(ax, names, series, "TTFT ms")
        ax.set_title(f"{workload}: time to first token "
                     "(bars left to right: p50, p90, p99; log scale)")
        ax.set_yscale("log")
        file = f"ttft_{workload}.png"
        _save(fig, out_dir / file)
        images[workload] = file

    # Workloads where no contender got a single hit (tiny prompts) are left out.
    hit_workloads = [w for w in workloads if any(
        table.get((w, c), {}).get("hit_rate") for c in contenders)]
    if hit_workloads:
        fig, axes = plt.subplots(1, len(hit_workloads),
                                 figsize=(4.5 * len(hit_workloads), 4), squeeze=False)
        for ax, workload in zip(axes[0], hit_workloads, strict=True):
            names = [c for c in contenders
                     if table.get((workload, c), {}).get("hit_rate") is not None]
            values = [100 * table[(workload, c)]["hit_rate"] for c in names]
            _bars(ax, names, {"hit": values}, "prefix-cache hit rate %")
            ax.set_title(workload)
            ax.set_ylim(0, 100)
        _save(fig, out_dir / "hit_rate.png")
        images["hit_rate"] = "hit_rate.png"

    from bench.report import added_latency

    added = added_latency(table)
    added90 = added_latency(table, "e2e_p90_ms")
    names = [c for c in contenders if c in added]
    if names:
        fig, ax = plt.subplots(figsize=(8, 4))
        _bars(ax, names, {"p50": [added[c] for c in names],
                          "p90": [added90.get(c, 0.0) for c in names]},
              "ms added over direct", colour_by_series=True)
        ax.legend(fontsize=8)
        ax.set_title("Latency added by the gateway (short requests, p50 / p90)")
        _save(fig, out_dir / "added_latency.png")
        images["added_latency"] = "added_latency.png"

    cpu_rows = [(w, c) for w in workloads for c in contenders
                if table.get((w, c), {}).get("cpu_ms_per_req") and c != "direct"]
    if cpu_rows:
        gateways = [c for c in contenders if any(c == r[1] for r in cpu_rows)]
        fig, ax = plt.subplots(figsize=(9, 4))
        series = {w: [table.get((w, c), {}).get("cpu_ms_per_req") or 0.0
                      for c in gateways] for w in workloads}
        _bars(ax, gateways, series, "gateway CPU ms per request",
              colour_by_series=True)
        ax.legend(fontsize=7)
        ax.set_title("Gateway CPU per request, by workload")
        _save(fig, out_dir / "cpu.png")
        images["cpu"] = "cpu.png"
    return images
