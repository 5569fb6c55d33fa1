"""What the report shows, computed from the stored result rows only (pure: no file, no plot, no model).

Which run represents a (method, category) cell: the runs tagged ``comparison`` when the store
has such an experiment, otherwise all clean runs; among them the method's default
hyperparameters when such a run exists, otherwise the configuration with the best image AUROC
(marked with *). Runs that differ only in ``seed`` are averaged. The series of the study and robustness
plots are in ``flawmap.report.series``; ``flawmap.report.build`` renders both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..viz.text import format_label, format_value

METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
SETTINGS = ("resize", "crop", "aspect", "max_train")
IGNORED = {"device", "checkpoint_dir", "seed"}
CLEAN = (None, "", "none")
COMPARISON = "comparison"
#: the columns of a results row that are not hyperparameters (for methods not registered here)
NOT_PARAMS = {"corruption_seed", "data_root", "max_train", "run_key", "fit_key", "feature_cache", "feature_cache_hits",
              "feature_cache_misses", "feature_seconds", "flawmap_version", "torch_threads", "resolved_device",
              "finished_at", "experiment", "data_fingerprint", "trained_epochs", "best_epoch", "stopped_early"}
Row = dict[str, Any]
Series = dict[str, dict[str, list[float | None]]]  # line name -> metric -> y per x


# ---- row helpers ----------------------------------------------------------------------------------
def norm(v: Any) -> Any:
    """Lists (from JSON/CSV) and tuples compare equal: both become tuples."""
    return tuple(norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def mean(vals: Iterable[Any]) -> float | None:
    """Mean of the finite numbers among vals (None: there are none)."""
    v = [float(x) for x in vals if isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def tags(row: Row) -> list[str]:
    e = row.get("experiment")
    return [t for t in str(e).split(";") if t] if e else []


def is_clean(row: Row) -> bool:
    return row.get("corruption") in CLEAN


def sort_key(v: Any) -> tuple:
    if isinstance(v, bool) or v is None:
        return (0, str(v))
    if isinstance(v, (int, float)):
        return (1, float(v))
    return (2, format_label(v))


def order(values: Iterable[str]) -> list[str]:
    """Distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def param_names(method: str, rows: Sequence[Row]) -> list[str]:
    """Hyperparameters of a method (registry order), else the row keys that look like them."""
    from ..bench.runner import FIRST_COLUMNS
    from ..registry import detector_class

    try:
        names = detector_class(method).param_names()
    except Exception:  # noqa: BLE001 - a method not registered here: fall back to the row's columns
        known = set(FIRST_COLUMNS) | NOT_PARAMS
        names = order(k for r in rows for k, v in r.items() if k not in known and v is not None)
    return [n for n in names if n not in IGNORED]


def defaults(method: str) -> dict[str, Any]:
    from ..registry import detector_class

    try:
        return {k: norm(v) for k, v in detector_class(method).default_params().items()}
    except Exception:  # noqa: BLE001 - a method not registered here has no known defaults
        return {}


def config_of(row: Row, keys: Sequence[str]) -> tuple:
    return tuple(norm(row.get(k)) for k in keys)


def varying(rows: Sequence[Row], keys: Sequence[str]) -> list[str]:
    """The keys that take more than one value over rows."""
    return [k for k in keys if len({norm(r.get(k)) for r in rows}) > 1]


def group_by_config(rows: Sequence[Row], keys: Sequence[str]) -> dict[tuple, list[Row]]:
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault(config_of(r, keys), []).append(r)
    return groups


@dataclass
class Table:
    """A table as the report shows it: values (None = n/a), which cells are bold, the CSV file name."""

    header: list[str]
    body: list[list[Any]]
    bold: list[list[bool]] | None = None
    csv_name: str | None = None
    digits: int = 3


def best_marks(values: Sequence[float | None], digits: int = 3) -> list[bool]:
    """True for the values equal to the largest one as shown (rounded to ``digits``)."""
    best = max((round(v, digits) for v in values if v is not None), default=None)
    return [v is not None and round(v, digits) == best for v in values]


# ---- the comparison cells -------------------------------------------------------------------------
@dataclass
class Cell:
    """The runs (seeds) representing one (method, category) in the comparison tables."""

    method: str
    category: str
    rows: list[Row]
    tuned: bool  # True: not the default configuration but the best one

    def metric(self, key: str) -> float | None:
        return mean(r.get(key) for r in self.rows)


def _pick(method: str, rs: list[Row]) -> tuple[list[Row], bool]:
    """The runs of the default configuration (else of the best one) and whether it is the best one."""
    keys = param_names(method, rs) + list(SETTINGS)
    groups = group_by_config(rs, keys)
    dflt = defaults(method)
    pkeys = [k for k in varying(rs, keys) if k in dflt]  # only the choices the sweep made
    default_groups = [g for g in groups.values() if all(norm(g[0].get(k)) == dflt[k] for k in pkeys)]
    cands, tuned = (default_groups, False) if default_groups else (list(groups.values()), True)
    best = max(cands, key=lambda g: (mean(r.get("image_auroc") for r in g) or -1.0,
                                     mean(r.get("pixel_auroc") for r in g) or -1.0))
    return best, tuned and len(groups) > 1


def select_cells(rows: list[Row]) -> tuple[dict[tuple[str, str], Cell], str]:
    """{(method, category): Cell} of the comparison tables and a sentence naming the pool of runs used."""
    clean = [r for r in rows if is_clean(r)]
    pool = [r for r in clean if COMPARISON in tags(r)]
    rule = f"runs of the '{COMPARISON}' experiment" if pool else "all clean (uncorrupted) runs"
    by: dict[tuple[str, str], list[Row]] = {}
    for r in pool or clean:
        by.setdefault((r["method"], r["category"]), []).append(r)
    cells = {}
    for (method, cat), rs in by.items():
        chosen, tuned = _pick(method, rs)
        cells[(method, cat)] = Cell(method, cat, chosen, tuned)
    return cells, rule


def comparison_tables(cells: dict[tuple[str, str], Cell]) -> list[tuple[str, str, Table]]:
    """(metric key, metric name, table) per metric: rows categories + 'mean', columns methods."""
    methods = order(m for m, _ in cells)
    cats = sorted({c for _, c in cells})
    header = ["category", *[m + ("*" if any(cells[(m, c)].tuned for c in cats if (m, c) in cells) else "")
                            for m in methods]]
    out = []
    for key, name in METRICS:
        body, bold = [], []
        for cat in [*cats, "mean"]:
            if cat == "mean":
                vals = [mean(cells[(m, c)].metric(key) for c in cats if (m, c) in cells) for m in methods]
            else:
                vals = [cells[(m, cat)].metric(key) if (m, cat) in cells else None for m in methods]
            body.append([cat, *vals])
            bold.append([False, *best_marks(vals)])
        out.append((key, name, Table(header, body, bold, csv_name=f"{key}.csv")))
    return out


def _differs(v: Any, d: Any) -> bool:
    return v != d and not (isinstance(v, (int, float)) and isinstance(d, (int, float)) and float(v) == float(d))


def non_default_settings(cells: dict[tuple[str, str], Cell]) -> dict[str, str]:
    """{method: 'key=value (default d), ...'} for hyperparameters of the comparison cells that are not
    the method's defaults (IGNORED keys left out; tuned cells' swept choices included)."""
    out: dict[str, str] = {}
    for method in order(m for m, _ in cells):
        dflt = {k: d for k, d in defaults(method).items() if k not in IGNORED}
        diffs: dict[str, str] = {}
        for r in (r for (m, _), cell in cells.items() if m == method for r in cell.rows):
            for k, d in dflt.items():
                if k in r and _differs(norm(r[k]), d):
                    diffs.setdefault(k, f"{k}={format_value(norm(r[k]), 3, None)} (default {format_value(d, 3, None)})")
        if diffs:
            out[method] = ", ".join(diffs.values())
    return out


def timing_table(cells: dict[tuple[str, str], Cell]) -> Table:
    """Per method, over its comparison runs: mean fit s, inference ms / image, peak RSS MiB, mean epochs trained
    (trained methods; None: no training, or rows stored before the column), device, runs."""
    body = []
    for m in order(m for m, _ in cells):
        rs = [r for (mm, _), c in cells.items() if mm == m for r in c.rows]
        ppi = mean(r.get("predict_seconds_per_image") for r in rs)
        body.append([m, mean(r.get("fit_seconds") for r in rs), None if ppi is None else ppi * 1000,
                     mean(r.get("peak_rss_mb") for r in rs), mean(r.get("trained_epochs") for r in rs),
                     order(str(r.get("resolved_device")) for r in rs)[0], len(rs)])
    return Table(["method", "fit (s)", "inference (ms / image)", "peak RSS (MiB)", "epochs trained", "device", "runs"], body,
                 csv_name="timing.csv", digits=1)


__all__ = ["Cell", "Row", "Series", "Table", "best_marks", "comparison_tables", "group_by_config", "mean",
           "non_default_settings", "norm", "order", "param_names", "select_cells", "sort_key", "tags", "timing_table",
           "varying"]
