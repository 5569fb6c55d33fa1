"""Static benchmark report: ``flawmap report RESULTS -o DIR``.

Reads what ``flawmap bench`` stored (results.sqlite or results.csv, per-run details, the gallery PNGs
under ``artifacts/<run_key>/`` and the corruption pictures under ``artifacts/corruptions/``) and never
re-runs a model, re-reads the dataset or re-applies a corruption. Writes a self-contained folder that
opens offline: ``index.html`` (no external URL, no script), ``report.md``, ``tables/*.csv``,
``img/*.png`` (matplotlib, Agg backend), ``gallery/`` and ``corruptions/`` (copied pictures).

Sections: method comparison in the layout of the study's tables 7 and 8 (rows categories,
columns methods; image AUROC, pixel AUROC, AUPRO; best per row in bold), fit and inference time
per method, one study per experiment (metric versus each swept hyperparameter), robustness curves
(metric versus corruption severity per method) with pictures of each corruption, ROC curves per
category, and a gallery per method and category (best, worst and borderline test images).
What each table holds is decided in ``flawmap.report.select`` (pure functions of the rows);
this module renders it (``flawmap.report.page``); the plots' series in ``flawmap.report.series``.
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..bench.pictures import CATALOGUE_SEVERITIES, catalogue_name, pictures_folder, source_image_name, sweep_name
from ..bench.store import read_rows
from ..errors import DataError
from ..io import atomic_replace_dir, check_replaceable, check_writable
from ..viz import plots
from . import select as sel, series as ser
from .page import Page, slug
from .select import Cell, Row, select_cells

Cells = dict[tuple[str, str], Cell]


# ---- the sections ---------------------------------------------------------------------------------
def comparison_section(page: Page, cells: Cells, rule: str) -> None:
    page.section("comparison", "Method comparison (tables 7 and 8 of the study)")
    page.text(f"Rows: categories, columns: methods. Each cell uses {rule}: the method's default "
              "hyperparameters when such a run exists, otherwise its best configuration (marked *); seeds are "
              "averaged. Best value per row in bold. n/a: metric not available (e.g. no ground-truth masks).")
    for key, name, table in sel.comparison_tables(cells):
        page.section(f"table-{key}", name, level=3)
        page.table(table)
    changed = sel.non_default_settings(cells)
    if changed:
        page.text("Settings that differ from the paper defaults in these cells (e.g. training shortened for a "
                  "CPU; such figures are not the paper's): " + "; ".join(f"{m}: {d}" for m, d in changed.items()) + ".")


def timing_section(page: Page, cells: Cells) -> None:
    page.section("timing", "Fit and inference time per method")
    page.text("Mean over the runs of the comparison tables (all categories): fit time in seconds (backbone features, "
              "memory bank / training), inference time per test image in milliseconds, peak resident memory of a run. "
              "Feature-cache hits make later runs of a sweep faster than a fresh run; fit_seconds is measured as run.")
    table = sel.timing_table(cells)
    page.table(table)
    rel = "img/timing.png"
    plots.bar_plot(page.out / rel, [b[0] for b in table.body], [("fit time (s)", [b[1] for b in table.body]),
                                                                ("inference (ms / image)", [b[2] for b in table.body])])
    page.image(rel, "fit and inference time per method")


def _study_plots(page: Page, study: ser.Study) -> None:
    exp, method = study.experiment, study.method
    panels = list(ser.STUDY_PANELS)
    if study.full_grid() or len(study.varying) == 1:
        for i, k in enumerate(study.varying):
            xs, series = ser.study_axis_series(study, i)
            rel = f"img/study_{slug(exp, method, k)}.png"
            plots.line_plot(page.out / rel, k, xs, series, panels, title=f"{method}: metric vs {k}")
            page.image(rel, f"{method} metric versus {k}")
    else:  # alternatives (variants): one categorical axis of configurations
        names, series = ser.study_config_series(study)
        rel = f"img/study_{slug(exp, method, 'configurations')}.png"
        plots.line_plot(page.out / rel, " / ".join(study.varying), names, series, panels,
                        title=f"{method}: configurations")
        page.image(rel, f"{method} metric per configuration")


def study_sections(page: Page, rows: list[Row]) -> None:
    blocks = ser.studies(rows)
    if not blocks:
        return
    page.section("studies", "Hyperparameter studies")
    page.text("Metric versus each swept hyperparameter, averaged over categories and seeds (one line per value of the "
              "other swept hyperparameters). Tables: every configuration, averaged over categories and seeds.")
    for study in blocks:
        exp = study.experiment
        title = f"{study.method}: {', '.join(study.varying)}" + (f" (experiment {exp})" if exp else "")
        page.section(slug("study", exp, study.method), title, level=3)
        _study_plots(page, study)
        page.table(ser.study_table(study, f"study_{slug(exp, study.method)}.csv"))


def robustness_section(page: Page, rows: list[Row], folder: Path) -> None:
    blocks = ser.robustness(rows)
    if not blocks:
        return
    page.section("robustness", "Robustness to test-image corruptions")
    page.text("Metric versus corruption severity (0 = clean test images, the same fitted model), averaged over "
              "categories and seeds; corruptions are applied to the test images only, each image with probability p.")
    pics = pictures_folder(folder)
    for rb in blocks:
        name = rb.name
        page.section(slug("robustness", name), f"{name} (p = {', '.join(map(str, rb.ps))})", level=3)
        rel = f"img/robustness_{slug(name)}.png"
        plots.line_plot(page.out / rel, "severity", rb.xs, rb.series, list(ser.ROBUSTNESS_PANELS),
                        title=f"{name}: metric vs severity")
        page.image(rel, f"{name}: metric versus severity")
        for table in ser.robustness_tables(rb, slug(name)):
            page.table(table)
        wanted = [("clean.png", "clean"), *[(sweep_name(name, s), f"severity {s}") for s in rb.severities]]
        items = [(page.copy(pics / f, f"corruptions/{f}"), f"{name} {cap}", cap) for f, cap in wanted
                 if (pics / f).is_file()]
        if items:
            page.text(f"{name}: the same test image clean and at each severity of the sweep (p = 1 for the picture).")
            page.images(items)


def catalogue_section(page: Page, folder: Path) -> None:
    """Every corruption at severities 1, 3 and 5 on one test image: the pictures the bench wrote
    (``flawmap.bench.pictures``); nothing when the bench folder has none."""
    from ..data.corruptions import CORRUPTIONS

    pics = pictures_folder(folder)
    rows = [[(n, s) for s in CATALOGUE_SEVERITIES if (pics / catalogue_name(n, s)).is_file()] for n in CORRUPTIONS]
    if not any(rows):
        return
    page.section("corruptions", "Corruptions")
    page.text(f"Each corruption at severities 1, 3 and 5 (p = 1) on {source_image_name(pics) or 'a test image'}; "
              "see flawmap.data.corruptions.SEVERITY_TABLE for the strength of each level.")
    for items in filter(None, rows):
        page.images([(page.copy(pics / catalogue_name(n, s), f"corruptions/{catalogue_name(n, s)}"),
                      f"{n} severity {s}", f"{n} s{s}") for n, s in items])


def roc_section(page: Page, cells: Cells, details: dict[str, dict[str, Any]]) -> None:
    from ..metrics import roc_curve

    if not any(details.get(r.get("run_key")) for c in cells.values() for r in c.rows):
        return
    page.section("roc", "ROC curves")
    page.text("Image-level ROC from the stored per-image scores, pixel-level ROC from the stored curve points, of the "
              "runs in the comparison tables (first seed).")
    for cat in sorted({c for _, c in cells}):
        image, pixel = {}, {}
        for (m, _), cell in ((k, v) for k, v in cells.items() if k[1] == cat):
            first = cell.rows[0]
            d = details.get(first.get("run_key")) or {}
            y, s = np.asarray(d.get("labels", []), dtype=int), np.asarray(d.get("scores", []), dtype=float)
            if len(y) and y.any() and not y.all():
                fpr, tpr, _ = roc_curve(y, s)
                image[m] = (fpr, tpr, first.get("image_auroc"))
            if d.get("pixel_roc"):
                pixel[m] = (d["pixel_roc"]["fpr"], d["pixel_roc"]["tpr"], first.get("pixel_auroc"))
        if image or pixel:
            rel = f"img/roc_{slug(cat)}.png"
            plots.roc_plot(page.out / rel, image, pixel, title=cat)
            page.image(rel, f"ROC curves {cat}")


def gallery_section(page: Page, cells: Cells, details: dict[str, dict[str, Any]], folder: Path) -> None:
    from ..bench.pictures import ARTIFACTS

    entries = []
    for (m, c), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        key = cell.rows[0].get("run_key")
        d = details.get(key) or {}
        files = [(g, folder / ARTIFACTS / str(key) / g["file"]) for g in d.get("gallery", [])]
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
        page.section(slug("gallery", m, c), f"{m} / {c}", level=3)
        items = []
        for g, p in files:
            truth = "defect" if g.get("label") else "good"
            items.append((page.copy(p, f"gallery/{key}/{p.name}"), f"{m} {c} {g['kind']} {g.get('name')}",
                          f"{g['kind']}: {g.get('name')} ({truth}, score {g.get('score', 0):.3g}, "
                          f"threshold {d.get('image_threshold', 0):.3g})"))
        page.images(items)


# ---- the report folder ----------------------------------------------------------------------------
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

    atomic_replace_dir(out_dir, lambda tmp: _build(Page(tmp), rows, details, folder))
    return out_dir / "index.html"


def _meta(rows: list[Row]) -> str:
    cats = sorted({r["category"] for r in rows})
    exps = sorted({t for r in rows for t in sel.tags(r)})
    return (f"{len(rows)} runs; methods: {', '.join(sel.order(r['method'] for r in rows))}; categories: {', '.join(cats)}"
            + (f"; experiments: {', '.join(exps)}" if exps else "")
            + f"; data: {', '.join(sorted({str(r.get('data_root')) for r in rows}))}"
            + f"; generated {time.strftime('%Y-%m-%d %H:%M')} by flawmap {__version__}.")


def _build(page: Page, rows: list[Row], details: dict[str, dict[str, Any]], folder: Path) -> None:
    from ..bench.runner import FIRST_COLUMNS
    from ..bench.store import write_csv

    meta = _meta(rows)
    page.html.append(f'<p class="meta">{html.escape(meta)}</p>')
    page.md.append(meta + "\n")
    cells, rule = sel.select_cells(rows)
    if cells:
        comparison_section(page, cells, rule)
        timing_section(page, cells)
    study_sections(page, rows)
    robustness_section(page, rows, folder)
    if any(not sel.is_clean(r) for r in rows):
        catalogue_section(page, folder)
    if cells:
        roc_section(page, cells, details)
        gallery_section(page, cells, details, folder)
    page.section("all-runs", "All runs")
    page.text(f"Every run with its full configuration: tables/results.csv ({len(rows)} rows).")
    write_csv(rows, page.out / "tables" / "results.csv", FIRST_COLUMNS)
    page.html.append('<p class="csv"><a href="tables/results.csv">results.csv</a></p>')
    page.write(REPORT_TITLE)


__all__ = ["build_report", "is_report_folder", "select_cells"]
