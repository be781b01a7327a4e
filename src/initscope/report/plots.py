"""Static figures (matplotlib, built without pyplot): the per-layer statistics of one or more
runs, as PNG files to put in a paper or a slide. The HTML report draws the same data as
interactive SVG (:mod:`initscope.report.svg`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from initscope.report.rows import METRICS, metric_points
from initscope.report.svg import PALETTE

if TYPE_CHECKING:
    from initscope.report.html import Run

__all__ = ["runs_figure", "save_png"]


def runs_figure(runs: Sequence[Run], title: str = "") -> Any:
    """A 2x2 matplotlib Figure: forward std, gradient std, dead % and fp16 underflow % per
    layer, one line per run, log y axes (zeros of the percentages sit on the axis floor)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 7.2), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (metric, (name, y_label, unit, floor, which)) in zip(axes, METRICS.items()):
        for i, run in enumerate(runs):
            color = PALETTE[i % len(PALETTE)]
            for j, points in enumerate(metric_points(run.trace, metric)):
                xs = [x for x, y, _ in points if y is not None and (y > 0 or floor is not None)]
                ys = [max(y, floor) if floor is not None else y for _, y, _ in points
                      if y is not None and (y > 0 or floor is not None)]
                ax.plot(xs, ys, color=color, ls="--" if j else "-", marker="o", ms=3, lw=1.5,
                        label=run.label + (" (gradient)" if j else ""))
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"{which} layer, in execution order", fontsize=9)
        ax.set_ylabel(y_label, fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG (parent directories created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
