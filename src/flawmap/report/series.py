"""The data of the report's plots, from the stored result rows only (pure): hyperparameter studies
(metric versus each swept hyperparameter) and robustness curves (metric versus corruption severity)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..viz.text import format_label
from .select import (
    METRICS,
    SETTINGS,
    Row,
    Series,
    Table,
    best_marks,
    group_by_config,
    is_clean,
    mean,
    norm,
    order,
    param_names,
    sort_key,
    tags,
    varying,
)

#: the metrics plotted against a swept hyperparameter / a corruption severity
STUDY_PANELS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("fit_seconds", "fit time (s)"))
ROBUSTNESS_PANELS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"))


# ---- hyperparameter studies -----------------------------------------------------------------------
@dataclass
class Study:
    """The clean runs of one method in one experiment ('' = none) and the hyperparameters they sweep."""

    experiment: str
    method: str
    rows: list[Row]
    varying: list[str]
    configs: dict[tuple, list[Row]] = field(default_factory=dict)  # swept values -> runs

    def distinct(self) -> list[list[Any]]:
        return [sorted({norm(r.get(k)) for r in self.rows}, key=sort_key) for k in self.varying]

    def full_grid(self) -> bool:
        return len(self.configs) == int(np.prod([len(d) for d in self.distinct()]))


def studies(rows: list[Row]) -> list[Study]:
    clean = [r for r in rows if is_clean(r)]
    exps = sorted({t for r in clean for t in tags(r)})
    out = []
    for exp, erows in [(e, [r for r in clean if e in tags(r)]) for e in exps] or [("", clean)]:
        for method in order(r["method"] for r in erows):
            mrows = [r for r in erows if r["method"] == method]
            vary = varying(mrows, param_names(method, mrows) + list(SETTINGS))
            if vary:
                out.append(Study(exp, method, mrows, vary, group_by_config(mrows, vary)))
    return out


def study_axis_series(study: Study, axis: int, max_lines: int = 10) -> tuple[list[Any], Series]:
    """x values of hyperparameter ``axis`` and one line per value of the other swept ones (a full grid)."""
    distinct = study.distinct()
    others = [j for j in range(len(study.varying)) if j != axis]
    series: Series = {}
    for combo in itertools.product(*(distinct[j] for j in others)):
        name = ", ".join(f"{study.varying[j]}={format_label(v)}" for j, v in zip(others, combo)) or study.method
        ys: dict[str, list[float | None]] = {m: [] for m, _ in STUDY_PANELS}
        for x in distinct[axis]:
            full = list(combo)
            full.insert(axis, x)
            for m, _ in STUDY_PANELS:
                ys[m].append(mean(r.get(m) for r in study.configs.get(tuple(full), [])))
        series[name] = ys
        if len(series) >= max_lines:
            break
    return distinct[axis], series


def study_configs(study: Study) -> list[tuple]:
    return sorted(study.configs, key=lambda c: tuple(sort_key(v) for v in c))


def study_config_series(study: Study) -> tuple[list[str], Series]:
    """Alternatives that are not a grid: one categorical axis of configurations, one line."""
    xs = study_configs(study)
    names = [", ".join(format_label(v) for v in c) for c in xs]
    return names, {study.method: {m: [mean(r.get(m) for r in study.configs[c]) for c in xs] for m, _ in STUDY_PANELS}}


def study_table(study: Study, csv_name: str) -> Table:
    """Every configuration: metrics, fit s, ms / image, runs (averaged over categories and seeds)."""
    n = len(study.varying)
    body = []
    for c in study_configs(study):
        rs = study.configs[c]
        ppi = mean(r.get("predict_seconds_per_image") for r in rs)
        body.append([*map(format_label, c), *[mean(r.get(m) for r in rs) for m, _ in METRICS],
                     mean(r.get("fit_seconds") for r in rs), None if ppi is None else ppi * 1000, len(rs)])
    marks = best_marks([b[n] for b in body])
    bold = [[False] * n + [mk] + [False] * (len(b) - n - 1) for b, mk in zip(body, marks)]
    return Table([*study.varying, *[nm for _, nm in METRICS], "fit (s)", "ms / image", "runs"], body, bold, csv_name)


# ---- robustness -----------------------------------------------------------------------------------
@dataclass
class Robustness:
    """One corruption: metric versus severity (0 = the clean runs of the same fits) per method line."""

    name: str
    ps: list[float]
    severities: list[int]  # of the corrupted runs
    xs: list[int]  # with 0 when clean runs exist
    series: Series


def _robustness_lines(crows: list[Row], clean_by_fit: dict[str, list[Row]]) -> dict[str, dict[int, list[Row]]]:
    lines: dict[str, dict[int, list[Row]]] = {}
    for r in crows:
        keys = [k for k in param_names(r["method"], [r]) if k != "seed"]
        vary = varying([x for x in crows if x["method"] == r["method"]], keys)
        lab = r["method"] + (" (" + ", ".join(f"{k}={format_label(r.get(k))}" for k in vary) + ")" if vary else "")
        s = lines.setdefault(lab, {})
        s.setdefault(int(r["severity"]), []).append(r)
        for c in clean_by_fit.get(r.get("fit_key"), []):
            if c not in s.setdefault(0, []):
                s[0].append(c)
    return lines


def robustness(rows: list[Row]) -> list[Robustness]:
    bad = [r for r in rows if not is_clean(r)]
    clean_by_fit: dict[str, list[Row]] = {}
    for r in rows:
        if is_clean(r) and r.get("fit_key"):
            clean_by_fit.setdefault(r["fit_key"], []).append(r)
    out = []
    for name in order(r["corruption"] for r in bad):
        crows = [r for r in bad if r["corruption"] == name]
        lines = _robustness_lines(crows, clean_by_fit)
        sevs = sorted({int(r["severity"]) for r in crows})
        xs = ([0] if any(0 in s for s in lines.values()) else []) + sevs
        series = {lab: {m: [mean(r.get(m) for r in s.get(x, [])) for x in xs] for m, _ in ROBUSTNESS_PANELS}
                  for lab, s in lines.items()}
        out.append(Robustness(name, sorted({r["p"] for r in crows if r.get("p") is not None}), sevs, xs, series))
    return out


def robustness_tables(rb: Robustness, slug: str) -> list[Table]:
    return [Table([f"{mname} / severity", *map(str, rb.xs)], [[lab, *rb.series[lab][m]] for lab in rb.series],
                  csv_name=f"robustness_{slug}_{m}.csv") for m, mname in ROBUSTNESS_PANELS]


__all__ = ["ROBUSTNESS_PANELS", "STUDY_PANELS", "Robustness", "Study", "robustness", "robustness_tables", "studies",
           "study_axis_series", "study_config_series", "study_table"]
