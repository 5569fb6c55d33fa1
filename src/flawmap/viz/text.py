"""Presentation of values and rows as text: the one place that decides how a number, a missing metric or a
list is written, used by the terminal tables (CLI, bench, tune), the sweep's progress lines and the report."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

#: the columns of the terminal results table when none are given
DEFAULT_COLUMNS = ("method", "category", "backbone", "image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1",
                   "fit_seconds", "predict_seconds_per_image", "peak_rss_mb")


def format_value(v: Any, digits: int = 4, large_digits: int | None = 1) -> str:
    """None (a metric that cannot be computed) -> 'n/a'; a float -> ``digits`` decimals (``large_digits`` from
    100 up, None: no special case); a list/tuple -> its items joined by '+'; anything else -> str."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        d = large_digits if large_digits is not None and abs(v) >= 100 else digits
        return f"{v:.{d}f}"
    if isinstance(v, (list, tuple)):
        return "+".join(map(str, v))  # as the plots' labels: layer2+layer3
    return str(v)


def format_label(v: Any) -> str:
    """A hyperparameter value as a short label (plot ticks, legends, file names, report tables): a list/tuple
    -> its items joined by '+', a float -> ``%g``, None -> 'default', anything else -> str."""
    if isinstance(v, (list, tuple)):
        return "+".join(map(str, v))
    if isinstance(v, float):
        return f"{v:g}"
    return "default" if v is None else str(v)


def format_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """Plain-text table for the terminal: a header, a rule, one left-aligned line per row (format_value)."""
    cells = [[format_value(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


__all__ = ["DEFAULT_COLUMNS", "format_label", "format_table", "format_value"]
