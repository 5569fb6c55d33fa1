"""What the report shows, decided from result rows alone (flawmap.report.select / series)."""

from __future__ import annotations

import pytest

from flawmap.registry import detector_class
from flawmap.report import select as sel, series as ser

DEFAULT_RATIO = detector_class("patchcore").default_params()["coreset_ratio"]


def _row(method: str, category: str, auroc: float, **kw) -> dict:
    return {"method": method, "category": category, "corruption": "none", "image_auroc": auroc,
            "pixel_auroc": auroc / 2, "aupro": None, "fit_seconds": 2.0, "predict_seconds_per_image": 0.01,
            "peak_rss_mb": 100.0, "resolved_device": "cpu", "run_key": f"{method}-{category}-{auroc}", **kw}


ROWS = [
    _row("patchcore", "a", 0.90, coreset_ratio=DEFAULT_RATIO, experiment="comparison"),
    _row("patchcore", "a", 0.99, coreset_ratio=0.5, experiment="sweep"),  # better, but not the default: not shown
    _row("patchcore", "b", 0.70, coreset_ratio=DEFAULT_RATIO, experiment="comparison"),
    _row("padim", "a", 0.95, experiment="comparison"),
    _row("padim", "b", 0.60, experiment="comparison", seed=0),
    _row("padim", "b", 0.80, experiment="comparison", seed=1),  # seeds are averaged
    _row("patchcore", "a", 0.10, coreset_ratio=DEFAULT_RATIO, corruption="jpeg", severity=3),  # not clean
]


def test_cells_use_the_comparison_runs_and_the_default_configuration() -> None:
    cells, rule = sel.select_cells(ROWS)
    assert "comparison" in rule and sorted(cells) == [("padim", "a"), ("padim", "b"), ("patchcore", "a"), ("patchcore", "b")]
    assert [r["image_auroc"] for r in cells[("patchcore", "a")].rows] == [0.90]
    assert cells[("padim", "b")].metric("image_auroc") == pytest.approx(0.70)
    assert not any(c.tuned for c in cells.values())


def test_comparison_tables_equal_the_rows() -> None:
    cells, _ = sel.select_cells(ROWS)
    (key, name, t), *_ = sel.comparison_tables(cells)
    assert (key, name, t.csv_name) == ("image_auroc", "image AUROC", "image_auroc.csv")
    assert t.header == ["category", "patchcore", "padim"]
    assert t.body == [["a", 0.90, 0.95], ["b", 0.70, pytest.approx(0.70)], ["mean", pytest.approx(0.80), pytest.approx(0.825)]]
    assert t.bold == [[False, False, True], [False, True, True], [False, False, True]]  # ties at 3 decimals both bold
    aupro = sel.comparison_tables(cells)[2][2]
    assert aupro.body[0] == ["a", None, None] and aupro.bold[0] == [False, False, False]  # n/a, never best


def test_without_a_default_run_the_best_configuration_is_marked_tuned() -> None:
    rows = [_row("patchcore", "a", 0.8, coreset_ratio=0.3), _row("patchcore", "a", 0.9, coreset_ratio=0.5)]
    cells, rule = sel.select_cells(rows)
    assert rule == "all clean (uncorrupted) runs"
    cell = cells[("patchcore", "a")]
    assert cell.tuned and cell.rows[0]["coreset_ratio"] == 0.5
    assert sel.comparison_tables(cells)[0][2].header == ["category", "patchcore*"]
    assert sel.non_default_settings(cells) == {"patchcore": f"coreset_ratio=0.500 (default {DEFAULT_RATIO:.3f})"}


def test_timing_table() -> None:
    cells, _ = sel.select_cells(ROWS)
    t = sel.timing_table(cells)
    assert t.body[1] == ["padim", 2.0, pytest.approx(10.0), 100.0, None, "cpu", 3]
    rows = [{**_row("fastflow", "a", 0.9), "trained_epochs": e} for e in (30, 50)]
    (fastflow,) = sel.timing_table(sel.select_cells(rows)[0]).body
    assert fastflow[4] == 40.0  # mean epochs trained


def test_study_and_robustness_series() -> None:
    rows = [_row("patchcore", "a", v, coreset_ratio=r, patch_size=p, fit_key="f" if (r, p) == (0.1, 3) else None)
            for v, r, p in [(0.5, 0.1, 1), (0.6, 0.1, 3), (0.7, 0.3, 1), (0.8, 0.3, 3)]]
    (study,) = ser.studies(rows)
    assert study.varying == ["patch_size", "coreset_ratio"] and study.full_grid()  # registry order
    xs, series = ser.study_axis_series(study, 1)
    assert xs == [0.1, 0.3] and series["patch_size=3"]["image_auroc"] == [0.6, 0.8]
    table = ser.study_table(study, "s.csv")
    assert [b[:3] for b in table.body] == [["1", "0.1", 0.5], ["1", "0.3", 0.7], ["3", "0.1", 0.6], ["3", "0.3", 0.8]]
    assert [b[2] for b in table.bold] == [False, False, False, True]
    noisy = [_row("patchcore", "a", 0.4, coreset_ratio=0.1, patch_size=3, corruption="jpeg", severity=2, p=1.0, fit_key="f")]
    (rb,) = ser.robustness(rows + noisy)
    assert (rb.name, rb.xs, rb.ps) == ("jpeg", [0, 2], [1.0]) and rb.series["patchcore"]["image_auroc"] == [0.6, 0.4]
