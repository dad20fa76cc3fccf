"""PNG plots of a run (matplotlib, Agg backend), drawn from the run's JSON alone."""

from __future__ import annotations

import os
import textwrap
from typing import Any

from .contestants import CONTESTANTS
from .report import Json, describe, hop_label, pinned_to, run_name

COLORS = {
    "sync": "#7f7f7f",
    "async_orm": "#d62728",
    "async_orm_colocated": "#9467bd",
    "async_orm_colocated_pinned": "#8c564b",
    "sa_aiosqlite": "#1f77b4",
    "sa_psycopg": "#1f77b4",
    "sa_asyncpg": "#17becf",
    "to_thread": "#ff7f0e",
    "sync_to_async": "#2ca02c",
}
ORDER = [c.name for c in CONTESTANTS]
SIMPLE = ("pk_get", "select_10", "insert_commit", "bulk_insert", "select_many", "stream")


def _label(name: str, workload: str = "") -> str:
    return hop_label(name, workload)


def _bars(ax: Any, entries: Json, title: str, workload: str = "") -> None:
    key = "median"
    names = [n for n in ORDER if n in entries and key in entries[n]]
    if not names:
        ax.set_visible(False)
        return
    vals = [entries[n][key] for n in names]
    lo = [entries[n][key] - entries[n]["min"] for n in names]
    hi = [entries[n]["max"] - entries[n][key] for n in names]
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, vals, xerr=[lo, hi], color=[COLORS.get(n, "#999") for n in names], capsize=2)
    ax.set_yticks(ys, [_label(n, workload) for n in names], fontsize=8)
    unit = entries[names[0]].get("unit", "")
    better = "higher" if entries[names[0]].get("higher_is_better", True) else "lower"
    wrapped = "\n".join(textwrap.wrap(title, 48))
    ax.set_title(f"{wrapped}\n({unit}, {better} is better)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    top = max(v + h for v, h in zip(vals, hi, strict=True)) or 1.0
    ax.set_xlim(0, top * 1.3)
    for y, v, h in zip(ys, vals, hi, strict=True):
        text = f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"
        ax.text(v + h + top * 0.02, y, text, va="center", fontsize=7)


def plot(data: Json, outdir: str, prefix: str | None = None) -> list[str]:
    """Write the PNGs for ``data`` into ``outdir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, summary = data["meta"], data["summary"]
    prefix = prefix or run_name(meta)
    os.makedirs(outdir, exist_ok=True)
    paths: list[str] = []
    where = " · ".join(filter(None, (str(meta.get("backend")), pinned_to(meta))))
    subtitle = f"{where} · {meta.get('cpu', '')} · {meta.get('date', '')}"

    cases = [c for c in SIMPLE if c in summary]
    if cases:
        cols = 2
        rows = (len(cases) + 1) // 2
        fig, axes = plt.subplots(rows, cols, figsize=(11, 2.6 * rows), squeeze=False)
        for i, case in enumerate(cases):
            first = next(iter(summary[case].values()))
            _bars(axes[i // cols][i % cols], summary[case], describe(case, first["size"], meta))
        for j in range(len(cases), rows * cols):
            axes[j // cols][j % cols].set_visible(False)
        fig.suptitle(f"async_orm vs peers: throughput (median, min-max) — {subtitle}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(outdir, f"{prefix}-throughput.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    conc = sorted(
        (k for k in summary if k.startswith("concurrent/")), key=lambda k: int(k.split("=")[1])
    )
    if conc:
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), squeeze=False)
        panels = [
            ("median", "throughput (req/s)", axes[0][0], False),
            ("p99_ms", "p99 latency (ms)", axes[0][1], True),
            ("peak_threads", "peak OS threads", axes[1][0], True),
            ("errors", "errors (worst repeat)", axes[1][1], False),
        ]
        for key, title, ax, logy in panels:
            for name in ORDER:
                xs, ys, stalled = [], [], []
                for case in conc:
                    e = summary[case].get(name)
                    if not e or "median" not in e:
                        continue
                    v = e["median"] if key == "median" else e["extras"].get(key)
                    if v is None:
                        continue
                    n = int(case.split("=")[1])
                    xs.append(n)
                    ys.append(v)
                    if e["extras"].get("stalled"):
                        stalled.append((n, v))
                if xs:
                    ax.plot(xs, ys, marker="o", label=_label(name), color=COLORS.get(name))
                    for n, v in stalled:
                        ax.plot([n], [v], marker="x", markersize=12, color="black")
            ax.set_xscale("log")
            if logy:
                ax.set_yscale("log")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("concurrent clients N", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.grid(True, alpha=0.3)
        cap = int(meta.get("pool_size", 10)) + int(meta.get("max_overflow", 0))
        axes[1][0].axhline(cap + 2, color="black", linestyle=":", linewidth=1)
        axes[1][0].text(1, cap + 2, f" pool+2 = {cap + 2}", fontsize=7, va="bottom")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(
            f"N concurrent requests (get, update, commit), pool {meta.get('pool_size')}"
            f"+{meta.get('max_overflow')}, pool_timeout={meta.get('pool_timeout')}s; "
            f"x = stalled at deadline — {subtitle}",
            fontsize=9,
        )
        fig.tight_layout()
        path = os.path.join(outdir, f"{prefix}-concurrency.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    hop_cases = [c for c in ("hop", "hops_per_request") if c in summary]
    if hop_cases or "stream" in summary:
        panels2: list[tuple[str, str]] = [(c, "median") for c in hop_cases]
        if "stream" in summary:
            panels2.append(("stream", "peak_growth_mb"))
        # two panels a row, as wide as the other figures: readable at page width
        rows2 = (len(panels2) + 1) // 2
        fig, axes = plt.subplots(rows2, 2, figsize=(11, 3.2 * rows2), squeeze=False)
        flat_axes = list(axes.flat)
        for ax in flat_axes[len(panels2) :]:
            ax.set_visible(False)
        for ax, (case, key) in zip(flat_axes, panels2, strict=False):
            entries = summary[case]
            if key == "median":
                first = next(iter(entries.values()))
                _bars(ax, entries, describe(case, first["size"], meta), case)
            else:
                flat = {
                    n: {"median": e["extras"][key], "min": e["extras"][key],
                        "max": e["extras"][key], "unit": "MB", "higher_is_better": False}
                    for n, e in entries.items() if key in e.get("extras", {})
                }  # fmt: skip
                size = next(iter(entries.values()))["size"]
                _bars(ax, flat, f"stream {size:,} rows: peak memory growth")
        fig.suptitle(f"hops and memory — {subtitle}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(outdir, f"{prefix}-hops-memory.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
