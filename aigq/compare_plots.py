"""PNG plots for ``aigq compare`` (matplotlib, headless Agg backend): metric curves over steps, HR@K bars."""

from __future__ import annotations

import math
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_curves(hist: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path:
    """One panel per metric (e.g. ``reward/query.total``), one line per run, x = step (IL-GRPO iteration, SFT step)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    n = len(hist)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (key, per_run) in zip(axes.flat, hist.items(), strict=False):
        for label, pts in per_run.items():
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=label)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations, SFT steps, days
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bars(values: dict[str, list[float | None]], labels: list[str], path: Path) -> Path:
    """Grouped bars: one group per metric (e.g. ``eval.query_hr_30``), one bar per run; missing values are gaps."""
    plt = _pyplot()
    keys = list(values)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(keys) * max(1, len(labels)) * 0.6 + 2), 3.8))
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(keys))]
        ys = [values[k][j] if values[k][j] is not None else math.nan for k in keys]
        bars = ax.bar(xs, ys, width=width, label=label)
        ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
    ax.set_xticks(range(len(keys)), keys, rotation=20, ha="right", fontsize=8)
    ax.set_title("HR@K and other eval metrics")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
