"""PNG plots for docs/benchmarks.md (matplotlib, Agg backend; skipped if it is missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Figure, progress


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib is missing: no plots (pip install matplotlib)")
        return None
    return plt


def bars(path: Path, title: str, ylabel: str, groups: dict[str, dict[str, Figure]]) -> bool:
    """Grouped bars (median) with min–max whiskers: groups → series → figure."""
    plt = _pyplot()
    if plt is None:
        return False
    series = list(dict.fromkeys(s for group in groups.values() for s in group))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for g, group in enumerate(groups.values()):
            figure = group.get(name)
            if figure is None or not figure.ok:
                continue
            xs.append(g + (i - (len(series) - 1) / 2) * width)
            ys.append(figure.median)
            lo.append(figure.median - figure.lo)
            hi.append(figure.hi - figure.median)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def lines(path: Path, title: str, xlabel: str, ylabel: str,
          series: dict[str, list[tuple[float, float]]]) -> bool:
    """Step lines of (x, y) points, one per series (e.g. processes over time)."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for name, points in series.items():
        if points:
            ax.step([p[0] for p in points], [p[1] for p in points], where="post", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def panels(path: Path, title: str, xlabel: str,
           grid: dict[str, dict[str, list[tuple[float, Figure]]]]) -> bool:
    """One small plot per figure (panel title → series → (x, figure)): medians joined by
    lines, min–max as whiskers, so growth against x is visible at a glance."""
    plt = _pyplot()
    if plt is None:
        return False
    cols = min(3, len(grid))
    rows = (len(grid) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (panel, series) in zip(axes.flat, grid.items(), strict=False):
        for name, points in series.items():
            points = [(x, f) for x, f in points if f.ok]
            if not points:
                continue
            ys = [f.median for _, f in points]
            err = [[f.median - f.lo for _, f in points], [f.hi - f.median for _, f in points]]
            ax.errorbar([x for x, _ in points], ys, yerr=err, marker="o", capsize=3, label=name)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(grid):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
