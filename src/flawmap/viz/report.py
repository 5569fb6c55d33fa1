"""Static benchmark report: ``flawmap report RESULTS -o DIR``.

Reads what ``flawmap bench`` stored (results.sqlite or results.csv, per-run details and the
gallery PNGs under ``artifacts/``) and never re-runs a model. Writes a self-contained folder
that opens offline: ``index.html`` (no external URL, no script), ``report.md``, ``tables/*.csv``,
``img/*.png`` (matplotlib, Agg backend), ``gallery/`` and ``corruptions/`` (copied pictures).

Sections: method comparison in the layout of the study's tables 7 and 8 (rows categories,
columns methods; image AUROC, pixel AUROC, AUPRO; best per row in bold), fit and inference time
per method, one study per experiment (metric versus each swept hyperparameter), robustness curves
(metric versus corruption severity per method) with pictures of each corruption, ROC curves per
category, and a gallery per method and category (best, worst and borderline test images).

Which run represents a (method, category) cell: the runs tagged ``comparison`` when the store
has such an experiment, otherwise all clean runs; among them the method's default
hyperparameters when such a run exists, otherwise the configuration with the best image AUROC
(marked with *). Runs that differ only in ``seed`` are averaged.
"""

from __future__ import annotations

import csv
import html
import itertools
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import __version__
from ..bench.store import read_rows
from ..errors import DataError
from ..io import atomic_replace_dir, check_replaceable, check_writable
from . import plots
from .text import format_value

log = logging.getLogger(__name__)

METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
SETTINGS = ("resize", "crop", "max_train")
IGNORED = {"device", "checkpoint_dir", "seed"}
CLEAN = (None, "", "none")
COMPARISON = "comparison"


# ---- small helpers --------------------------------------------------------------------------------
def _norm(v: Any) -> Any:
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def _mean(vals: Iterable[Any]) -> float | None:
    v = [float(x) for x in vals if isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def _tags(row: dict[str, Any]) -> list[str]:
    e = row.get("experiment")
    return [t for t in str(e).split(";") if t] if e else []


def _is_clean(row: dict[str, Any]) -> bool:
    return row.get("corruption") in CLEAN


def _sort_key(v: Any) -> tuple:
    if isinstance(v, bool) or v is None:
        return (0, str(v))
    if isinstance(v, (int, float)):
        return (1, float(v))
    return (2, plots.label(v))


def _param_names(method: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Hyperparameters of a method (registry order), else the row keys that look like them."""
    from ..bench.runner import FIRST_COLUMNS

    try:
        from ..registry import detector_class

        names = detector_class(method).param_names()
    except Exception:  # noqa: BLE001 - a method not registered here: fall back to the row's columns
        known = set(FIRST_COLUMNS) | {"corruption_seed", "data_root", "max_train", "run_key", "fit_key", "feature_cache",
                                      "feature_cache_hits", "feature_cache_misses", "feature_seconds",
                                      "flawmap_version", "torch_threads", "resolved_device", "finished_at",
                                      "experiment"}
        names = [k for r in rows for k, v in r.items() if k not in known and v is not None]
        names = list(dict.fromkeys(names))
    return [n for n in names if n not in IGNORED]


def _defaults(method: str) -> dict[str, Any]:
    try:
        from ..registry import detector_class

        return {k: _norm(v) for k, v in detector_class(method).default_params().items()}
    except Exception:  # noqa: BLE001
        return {}


def _config(row: dict[str, Any], keys: Sequence[str]) -> tuple:
    return tuple(_norm(row.get(k)) for k in keys)


@dataclass
class Cell:
    """The runs (seeds) representing one (method, category) in the comparison tables."""

    method: str
    category: str
    rows: list[dict[str, Any]]
    tuned: bool  # True: not the default configuration but the best one

    def metric(self, key: str) -> float | None:
        return _mean(r.get(key) for r in self.rows)


@dataclass
class Page:
    out: Path
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    toc: list[tuple[str, str]] = field(default_factory=list)
    n_img: int = 0

    def section(self, anchor: str, title: str, level: int = 2) -> None:
        if level == 2:
            self.toc.append((anchor, title))
        self.html.append(f'<h{level} id="{anchor}">{html.escape(title)}</h{level}>')
        self.md.append(f"\n{'#' * level} {title}\n")

    def text(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(text + "\n")

    def image(self, rel: str, alt: str, caption: str | None = None) -> None:
        self.n_img += 1
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.html.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(alt)}">{cap}</figure>')
        self.md.append(f"![{alt}]({rel})" + (f"\n*{caption}*" if caption else "") + "\n")

    def images(self, items: Sequence[tuple[str, str, str]]) -> None:
        """A row of (rel path, alt, caption) pictures."""
        cells = []
        for rel, alt, cap in items:
            self.n_img += 1
            cells.append(f'<figure class="small"><img src="{html.escape(rel)}" alt="{html.escape(alt)}">'
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
            self.md.append(f"![{alt}]({rel}) *{cap}*  ")
        self.html.append('<div class="row">' + "".join(cells) + "</div>")
        self.md.append("")

    def table(self, header: Sequence[str], body: Sequence[Sequence[Any]], bold: Sequence[Sequence[bool]] | None = None,
              csv_name: str | None = None, digits: int = 3) -> None:
        cells = [[format_value(v, digits, large_digits=None) for v in row] for row in body]
        bold = bold or [[False] * len(header) for _ in body]
        h = ["<table><thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr></thead><tbody>"]
        for row, b in zip(cells, bold):
            tds = "".join(f'<td class="best">{html.escape(c)}</td>' if bb else f"<td>{html.escape(c)}</td>"
                          for c, bb in zip(row, b))
            h.append(f"<tr>{tds}</tr>")
        h.append("</tbody></table>")
        if csv_name:
            h.append(f'<p class="csv"><a href="tables/{csv_name}">{html.escape(csv_name)}</a></p>')
        self.html.append("".join(h))
        md = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
        for row, b in zip(cells, bold):
            md.append("| " + " | ".join(f"**{c}**" if bb else c for c, bb in zip(row, b)) + " |")
        self.md.append("\n".join(md) + ("\n\n" + f"[{csv_name}](tables/{csv_name})" if csv_name else "") + "\n")
        if csv_name:
            path = self.out / "tables" / csv_name
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                for row in body:
                    w.writerow(["" if v is None else plots.label(v) if isinstance(v, (list, tuple)) else v for v in row])


def _slug(*parts: Any) -> str:
    s = "_".join(plots.label(p) for p in parts if p not in (None, ""))
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s)[:120] or "x"


# ---- the sections ---------------------------------------------------------------------------------
def select_cells(rows: list[dict[str, Any]]) -> tuple[dict[tuple[str, str], Cell], str]:
    clean = [r for r in rows if _is_clean(r)]
    pool = [r for r in clean if COMPARISON in _tags(r)]
    rule = f"runs of the '{COMPARISON}' experiment" if pool else "all clean (uncorrupted) runs"
    pool = pool or clean
    cells: dict[tuple[str, str], Cell] = {}
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in pool:
        by.setdefault((r["method"], r["category"]), []).append(r)
    for (method, cat), rs in by.items():
        keys = _param_names(method, rs) + list(SETTINGS)
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in rs:
            groups.setdefault(_config(r, keys), []).append(r)
        defaults = _defaults(method)
        pkeys = [k for k in _varying(rs, keys) if k in defaults]  # only the choices the sweep made
        default_groups = [g for g in groups.values() if all(_norm(g[0].get(k)) == defaults[k] for k in pkeys)]
        cands, tuned = (default_groups, False) if default_groups else (list(groups.values()), True)
        best = max(cands, key=lambda g: (_mean(r.get("image_auroc") for r in g) or -1.0,
                                         _mean(r.get("pixel_auroc") for r in g) or -1.0))
        cells[(method, cat)] = Cell(method, cat, best, tuned and len(groups) > 1)
    return cells, rule


def _order(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def comparison_section(page: Page, cells: dict[tuple[str, str], Cell], rule: str) -> None:
    methods = _order(m for m, _ in cells)
    cats = sorted({c for _, c in cells})
    page.section("comparison", "Method comparison (tables 7 and 8 of the study)")
    page.text(f"Rows: categories, columns: methods. Each cell uses {rule}: the method's default "
              "hyperparameters when such a run exists, otherwise its best configuration (marked *); seeds are "
              "averaged. Best value per row in bold. n/a: metric not available (e.g. no ground-truth masks).")
    for key, name in METRICS:
        page.section(f"table-{key}", name, level=3)
        body, bold = [], []
        for cat in [*cats, "mean"]:
            if cat == "mean":
                vals = [_mean(cells[(m, c)].metric(key) for c in cats if (m, c) in cells) for m in methods]
            else:
                vals = [cells[(m, cat)].metric(key) if (m, cat) in cells else None for m in methods]
            best = max((round(v, 3) for v in vals if v is not None), default=None)
            body.append([cat, *vals])
            bold.append([False, *[(v is not None and round(v, 3) == best) for v in vals]])
        header = ["category", *[m + ("*" if any(cells[(m, c)].tuned for c in cats if (m, c) in cells) else "")
                                for m in methods]]
        page.table(header, body, bold, csv_name=f"{key}.csv")
    changed = non_default_settings(cells)
    if changed:
        page.text("Settings that differ from the paper defaults in these cells (e.g. training shortened for a "
                  "CPU; such figures are not the paper's): " + "; ".join(f"{m}: {d}" for m, d in changed.items()) + ".")


def non_default_settings(cells: dict[tuple[str, str], Cell]) -> dict[str, str]:
    """{method: 'key=value (default d), ...'} for hyperparameters of the comparison cells that are not
    the method's defaults (IGNORED keys and tuned cells' swept choices included)."""
    out: dict[str, str] = {}
    for method in _order(m for m, _ in cells):
        defaults = _defaults(method)
        diffs: dict[str, str] = {}
        for (m, _), cell in cells.items():
            if m != method:
                continue
            for r in cell.rows:
                for k, d in defaults.items():
                    if k in IGNORED or k not in r:
                        continue
                    v = _norm(r[k])
                    if v != d and not (isinstance(v, (int, float)) and isinstance(d, (int, float)) and float(v) == float(d)):
                        diffs.setdefault(k, f"{k}={format_value(v, 3, None)} (default {format_value(d, 3, None)})")
        if diffs:
            out[method] = ", ".join(diffs.values())
    return out


def timing_section(page: Page, cells: dict[tuple[str, str], Cell]) -> None:
    methods = _order(m for m, _ in cells)
    page.section("timing", "Fit and inference time per method")
    page.text("Mean over the runs of the comparison tables (all categories): fit time in seconds (backbone features, "
              "memory bank / training), inference time per test image in milliseconds, peak resident memory of a run. "
              "Feature-cache hits make later runs of a sweep faster than a fresh run; fit_seconds is measured as run.")
    body = []
    for m in methods:
        rs = [r for (mm, _), c in cells.items() if mm == m for r in c.rows]
        ppi = _mean(r.get("predict_seconds_per_image") for r in rs)
        body.append([m, _mean(r.get("fit_seconds") for r in rs), None if ppi is None else ppi * 1000,
                     _mean(r.get("peak_rss_mb") for r in rs), _order(str(r.get("resolved_device")) for r in rs)[0], len(rs)])
    page.table(["method", "fit (s)", "inference (ms / image)", "peak RSS (MiB)", "device", "runs"], body,
               csv_name="timing.csv", digits=1)
    rel = "img/timing.png"
    plots.bar_plot(page.out / rel, methods, [("fit time (s)", [b[1] for b in body]),
                                             ("inference (ms / image)", [b[2] for b in body])])
    page.image(rel, "fit and inference time per method")


def _varying(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if len({_norm(r.get(k)) for r in rows}) > 1]


def study_sections(page: Page, rows: list[dict[str, Any]]) -> None:
    clean = [r for r in rows if _is_clean(r)]
    exps = sorted({t for r in clean for t in _tags(r)})
    groups = [(e, [r for r in clean if e in _tags(r)]) for e in exps] or [("", clean)]
    blocks = []
    for exp, erows in groups:
        for method in _order(r["method"] for r in erows):
            mrows = [r for r in erows if r["method"] == method]
            keys = _param_names(method, mrows) + list(SETTINGS)
            varying = _varying(mrows, keys)
            if varying:
                blocks.append((exp, method, mrows, varying))
    if not blocks:
        return
    page.section("studies", "Hyperparameter studies")
    page.text("Metric versus each swept hyperparameter, averaged over categories and seeds (one line per value of the "
              "other swept hyperparameters). Tables: every configuration, averaged over categories and seeds.")
    for exp, method, mrows, varying in blocks:
        title = f"{method}: {', '.join(varying)}" + (f" (experiment {exp})" if exp else "")
        page.section(_slug("study", exp, method), title, level=3)
        configs: dict[tuple, list[dict[str, Any]]] = {}
        for r in mrows:
            configs.setdefault(_config(r, varying), []).append(r)
        distinct = [sorted({_norm(r.get(k)) for r in mrows}, key=_sort_key) for k in varying]
        full_grid = len(configs) == int(np.prod([len(d) for d in distinct]))
        panels = [("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("fit_seconds", "fit time (s)")]
        if full_grid or len(varying) == 1:
            for i, k in enumerate(varying):
                xs = distinct[i]
                others = [j for j in range(len(varying)) if j != i]
                series: dict[str, dict[str, list[float | None]]] = {}
                for combo in itertools.product(*(distinct[j] for j in others)) if others else [()]:
                    name = ", ".join(f"{varying[j]}={plots.label(v)}" for j, v in zip(others, combo)) or method
                    ys: dict[str, list[float | None]] = {m: [] for m, _ in panels}
                    for x in xs:
                        full = list(combo)
                        full.insert(i, x)
                        rs = configs.get(tuple(full), [])
                        for m, _ in panels:
                            ys[m].append(_mean(r.get(m) for r in rs))
                    series[name] = ys
                    if len(series) >= 10:
                        break
                rel = f"img/study_{_slug(exp, method, k)}.png"
                plots.line_plot(page.out / rel, k, xs, series, panels, title=f"{method}: metric vs {k}")
                page.image(rel, f"{method} metric versus {k}")
        else:  # alternatives (variants): one categorical axis of configurations
            xs = sorted(configs, key=lambda c: tuple(_sort_key(v) for v in c))
            names = [", ".join(plots.label(v) for v in c) for c in xs]
            series = {method: {m: [_mean(r.get(m) for r in configs[c]) for c in xs] for m, _ in panels}}
            rel = f"img/study_{_slug(exp, method, 'configurations')}.png"
            plots.line_plot(page.out / rel, " / ".join(varying), names, series, panels, title=f"{method}: configurations")
            page.image(rel, f"{method} metric per configuration")
        body = []
        for c in sorted(configs, key=lambda c: tuple(_sort_key(v) for v in c)):
            rs = configs[c]
            ppi = _mean(r.get("predict_seconds_per_image") for r in rs)
            body.append([*map(plots.label, c), *[_mean(r.get(m) for r in rs) for m, _ in METRICS],
                         _mean(r.get("fit_seconds") for r in rs),
                         None if ppi is None else ppi * 1000, len(rs)])
        best = max((round(b[len(varying)], 3) for b in body if b[len(varying)] is not None), default=None)
        bold = [[False] * len(varying) + [b[len(varying)] is not None and round(b[len(varying)], 3) == best]
                + [False] * (len(b) - len(varying) - 1) for b in body]
        page.table([*varying, *[n for _, n in METRICS], "fit (s)", "ms / image", "runs"], body, bold,
                   csv_name=f"study_{_slug(exp, method)}.csv")


def robustness_section(page: Page, rows: list[dict[str, Any]], folder: Path) -> None:
    bad = [r for r in rows if not _is_clean(r)]
    if not bad:
        return
    page.section("robustness", "Robustness to test-image corruptions")
    page.text("Metric versus corruption severity (0 = clean test images, the same fitted model), averaged over "
              "categories and seeds; corruptions are applied to the test images only, each image with probability p.")
    by_fit: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if _is_clean(r) and r.get("fit_key"):
            by_fit.setdefault(r["fit_key"], []).append(r)
    pics = folder / "artifacts" / "corruptions"
    for name in _order(r["corruption"] for r in bad):
        crows = [r for r in bad if r["corruption"] == name]
        ps = sorted({r.get("p") for r in crows if r.get("p") is not None})
        page.section(_slug("robustness", name), f"{name} (p = {', '.join(map(str, ps))})", level=3)
        sevs = sorted({int(r["severity"]) for r in crows})
        series_rows: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for r in crows:
            keys = [k for k in _param_names(r["method"], [r]) if k != "seed"]
            same = [x for x in crows if x["method"] == r["method"]]
            vary = _varying(same, keys)
            label = r["method"] + (" (" + ", ".join(f"{k}={plots.label(r.get(k))}" for k in vary) + ")" if vary else "")
            s = series_rows.setdefault(label, {})
            s.setdefault(int(r["severity"]), []).append(r)
            for c in by_fit.get(r.get("fit_key"), []):
                if c not in s.setdefault(0, []):
                    s[0].append(c)
        xs = ([0] if any(0 in s for s in series_rows.values()) else []) + sevs
        panels = [("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC")]
        series = {lab: {m: [_mean(r.get(m) for r in s.get(x, [])) for x in xs] for m, _ in panels}
                  for lab, s in series_rows.items()}
        rel = f"img/robustness_{_slug(name)}.png"
        plots.line_plot(page.out / rel, "severity", xs, series, panels, title=f"{name}: metric vs severity")
        page.image(rel, f"{name}: metric versus severity")
        for m, mname in panels:
            body = [[lab, *series[lab][m]] for lab in series]
            page.table([f"{mname} / severity", *map(str, xs)], body, csv_name=f"robustness_{_slug(name)}_{m}.csv")
        items = []
        for stem, cap in [("clean", "clean"), *[(f"{name}_s{s}", f"severity {s}") for s in sevs]]:
            src = pics / f"{stem}.png"
            if src.is_file():
                dst = page.out / "corruptions" / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                items.append((f"corruptions/{src.name}", f"{name} {cap}", cap))
        if items:
            page.text(f"{name}: the same test image clean and at each severity of the sweep (p = 1 for the picture).")
            page.images(items)


def catalogue_section(page: Page, folder: Path, rows: list[dict[str, Any]]) -> None:
    """Every corruption at severities 1, 3 and 5 on one test image (when the data are readable here)."""
    from ..data import Transform, load_image, scan_category
    from ..data.corruptions import CORRUPTIONS, corrupt
    from .heatmap import save_png, to_uint8_image

    src = folder / "artifacts" / "corruptions" / "source.txt"
    path = None
    if src.is_file() and Path(src.read_text().strip()).is_file():
        path = Path(src.read_text().strip())
    else:
        for r in rows:
            try:
                data = scan_category(r["data_root"], r["category"])
                path = next((s.path for s in data.test if s.label == 1), data.test[0].path)
                break
            except Exception:  # noqa: BLE001 - data not available where the report is built
                continue
    if path is None:
        return
    try:
        img = Transform(resize=160)(load_image(path))[None]
    except Exception:  # noqa: BLE001
        return
    page.section("corruptions", "Corruptions")
    page.text(f"Each corruption at severities 1, 3 and 5 (p = 1) on {path.name}; "
              "see flawmap.data.corruptions.SEVERITY_TABLE for the strength of each level.")
    for name in CORRUPTIONS:
        items = []
        for sev in (1, 3, 5):
            x, _ = corrupt(name, img, sev, 0, p=1.0)
            rel = f"corruptions/catalogue_{name}_s{sev}.png"
            save_png(to_uint8_image(x[0].numpy()), page.out / rel)
            items.append((rel, f"{name} severity {sev}", f"{name} s{sev}"))
        page.images(items)


def roc_section(page: Page, cells: dict[tuple[str, str], Cell], details: dict[str, dict[str, Any]]) -> None:
    from ..metrics import roc_curve

    cats = sorted({c for _, c in cells})
    if not any(details.get(r.get("run_key")) for c in cells.values() for r in c.rows):
        return
    page.section("roc", "ROC curves")
    page.text("Image-level ROC from the stored per-image scores, pixel-level ROC from the stored curve points, of the "
              "runs in the comparison tables (first seed).")
    for cat in cats:
        image, pixel = {}, {}
        for (m, c), cell in cells.items():
            if c != cat:
                continue
            d = details.get(cell.rows[0].get("run_key")) or {}
            y, s = np.asarray(d.get("labels", []), dtype=int), np.asarray(d.get("scores", []), dtype=float)
            if len(y) and y.any() and not y.all():
                fpr, tpr, _ = roc_curve(y, s)
                image[m] = (fpr, tpr, cell.rows[0].get("image_auroc"))
            if d.get("pixel_roc"):
                pixel[m] = (d["pixel_roc"]["fpr"], d["pixel_roc"]["tpr"], cell.rows[0].get("pixel_auroc"))
        if image or pixel:
            rel = f"img/roc_{_slug(cat)}.png"
            plots.roc_plot(page.out / rel, image, pixel, title=cat)
            page.image(rel, f"ROC curves {cat}")


def gallery_section(page: Page, cells: dict[tuple[str, str], Cell], details: dict[str, dict[str, Any]],
                    folder: Path) -> None:
    entries = []
    for (m, c), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        key = cell.rows[0].get("run_key")
        d = details.get(key) or {}
        files = [(g, folder / "artifacts" / str(key) / g["file"]) for g in d.get("gallery", [])]
        files = [(g, p) for g, p in files if p.is_file()]
        if files:
            entries.append((m, c, key, d, files))
    if not entries:
        return
    page.section("gallery", "Gallery")
    page.text("Per method and category: image | ground truth | anomaly map | overlay with the threshold contour (cyan). "
              "best = most confidently right, worst = most wrong, borderline = closest to the image threshold (the "
              "F1-optimal threshold on the test scores); the pixel contour uses the F1-optimal pixel threshold.")
    for m, c, key, d, files in entries:
        page.section(_slug("gallery", m, c), f"{m} / {c}", level=3)
        items = []
        for g, p in files:
            dst = page.out / "gallery" / str(key) / p.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst)
            truth = "defect" if g.get("label") else "good"
            items.append((f"gallery/{key}/{p.name}", f"{m} {c} {g['kind']} {g.get('name')}",
                          f"{g['kind']}: {g.get('name')} ({truth}, score {g.get('score', 0):.3g}, "
                          f"threshold {d.get('image_threshold', 0):.3g})"))
        page.images(items)


# ---- the page -------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;
color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}h3{margin-top:1.6rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .6rem;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}td.best{font-weight:700;
background:#e8f4e8}figure{margin:.6rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8rem;
color:#555}.row{display:flex;flex-wrap:wrap;gap:.8rem}.row figure{margin:0}.small img{max-width:680px}
nav ul{columns:2;font-size:.9rem}.csv{font-size:.8rem;margin-top:0}.meta{color:#555;font-size:.9rem}
"""


def _head_html(title: str, body: str, toc: list[tuple[str, str]]) -> str:
    nav = "<nav><ul>" + "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in toc) + "</ul></nav>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{nav}{body}</body></html>\n")


REPORT_TITLE = "flawmap benchmark report"


def is_report_folder(path: Path) -> bool:
    """True for a folder written by ``build_report`` (index.html with its title, and report.md)."""
    index = path / "index.html"
    try:
        return (path / "report.md").is_file() and index.is_file() and REPORT_TITLE in index.read_text()[:2000]
    except (OSError, UnicodeDecodeError):
        return False


def build_report(results: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write the report folder for a results.sqlite / results.csv / bench folder; returns index.html.

    The folder is built under a temporary name and then exchanged with ``out_dir`` in one step (a
    failed build leaves the previous report untouched). ``out_dir`` must be missing, empty or a
    previous report (``is_report_folder``); any other folder is refused (OutputError), never deleted.
    """
    rows, details, folder = read_rows(results)
    if not rows:
        raise DataError(f"{results}: no finished runs to report")
    for r in rows:
        r.setdefault("corruption", "none")
    out_dir = Path(out_dir)
    check_replaceable(out_dir, is_report_folder, "flawmap report folder", force_flag="a new -o folder")
    check_writable(out_dir.parent)

    def build(tmp: Path) -> None:
        page = Page(tmp)
        cats = sorted({r["category"] for r in rows})
        methods = _order(r["method"] for r in rows)
        exps = sorted({t for r in rows for t in _tags(r)})
        meta = (f"{len(rows)} runs; methods: {', '.join(methods)}; categories: {', '.join(cats)}"
                + (f"; experiments: {', '.join(exps)}" if exps else "")
                + f"; data: {', '.join(sorted({str(r.get('data_root')) for r in rows}))}"
                + f"; generated {time.strftime('%Y-%m-%d %H:%M')} by flawmap {__version__}.")
        page.html.append(f'<p class="meta">{html.escape(meta)}</p>')
        page.md.append(meta + "\n")
        cells, rule = select_cells(rows)
        if cells:
            comparison_section(page, cells, rule)
            timing_section(page, cells)
        study_sections(page, rows)
        robustness_section(page, rows, folder)
        if any(not _is_clean(r) for r in rows):
            catalogue_section(page, folder, rows)
        if cells:
            roc_section(page, cells, details)
            gallery_section(page, cells, details, folder)
        page.section("all-runs", "All runs")
        page.text(f"Every run with its full configuration: tables/results.csv ({len(rows)} rows).")
        _write_rows_csv(rows, tmp / "tables" / "results.csv")
        page.html.append('<p class="csv"><a href="tables/results.csv">results.csv</a></p>')
        title = REPORT_TITLE
        (tmp / "index.html").write_text(_head_html(title, "\n".join(page.html), page.toc))
        (tmp / "report.md").write_text(f"# {title}\n\n" + "\n".join(page.md))

    atomic_replace_dir(out_dir, build)
    return out_dir / "index.html"


def _write_rows_csv(rows: list[dict[str, Any]], path: Path) -> None:
    from ..bench.runner import FIRST_COLUMNS
    from ..bench.store import write_csv

    write_csv(rows, path, FIRST_COLUMNS)


__all__ = ["build_report", "select_cells"]
