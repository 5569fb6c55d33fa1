"""Static plots for the report (matplotlib, Agg backend: no display, no pyplot global state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .text import format_label as label, format_value

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _figure(n_axes: int, width: float = 4.2, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_axes, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]
    return fig, axes


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)


def line_plot(path: Path, x_name: str, xs: Sequence[Any], series: dict[str, dict[str, Sequence[float | None]]],
              panels: Sequence[tuple[str, str]], title: str = "") -> Path:
    """One subplot per (metric key, y label) in ``panels``; in each, one line per series name.

    ``xs``: the x values (numeric: a real axis, log when they span >= 20x; else categorical);
    ``series[name][metric]``: y values aligned with xs (None = missing).
    """
    fig, axes = _figure(len(panels))
    numeric = is_numeric(xs)
    pos = np.asarray(xs, dtype=float) if numeric else np.arange(len(xs), dtype=float)
    for ax, (metric, ylabel) in zip(axes, panels):
        for i, (name, ys) in enumerate(series.items()):
            y = np.array([np.nan if v is None else float(v) for v in ys[metric]], dtype=float)
            ok = ~np.isnan(y)
            if ok.any():
                ax.plot(pos[ok], y[ok], marker="o", color=_COLORS[i % len(_COLORS)], label=name)
        if numeric and len(pos) and pos.min() > 0 and pos.max() / pos.min() >= 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(pos, [label(x) for x in xs], rotation=20 if len(xs) > 3 else 0, fontsize=8)
        elif len(pos) <= 8:
            ax.set_xticks(pos, [label(x) for x in xs], fontsize=8)
            ax.minorticks_off()
        ax.set_xlabel(x_name)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if names and (len(names) > 1 or names[0]):
        axes[-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def roc_plot(path: Path, image: dict[str, tuple[Sequence[float], Sequence[float], float | None]],
             pixel: dict[str, tuple[Sequence[float], Sequence[float], float | None]], title: str = "") -> Path:
    """Image-level and pixel-level ROC curves: {method: (fpr, tpr, auroc)}."""
    fig, axes = _figure(2, 3.8, 3.6)
    for ax, curves, name in ((axes[0], image, "image ROC"), (axes[1], pixel, "pixel ROC")):
        for i, (m, (fpr, tpr, auc)) in enumerate(curves.items()):
            lab = m if auc is None else f"{m} ({format_value(auc, 3)})"
            ax.plot(fpr, tpr, color=_COLORS[i % len(_COLORS)], label=lab, drawstyle="default")
        ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle=":", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.5, 0.5, "not available", ha="center", va="center", color="#888888")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def bar_plot(path: Path, names: Sequence[str], panels: Sequence[tuple[str, Sequence[float | None]]],
             title: str = "") -> Path:
    """One horizontal bar chart per (y label, values aligned with names)."""
    fig, axes = _figure(len(panels), 3.6, 0.5 + 0.35 * max(3, len(names)))
    y = np.arange(len(names))
    for ax, (ylabel, vals) in zip(axes, panels):
        v = np.array([np.nan if x is None else float(x) for x in vals])
        ax.barh(y, np.nan_to_num(v), color=[_COLORS[i % len(_COLORS)] for i in range(len(names))])
        ax.set_yticks(y, list(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
        ax.grid(alpha=0.3, axis="x")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
