"""A mini study through `flawmap bench --study FILE` and its report: tables in the layout of the study's
tables 7/8, study and robustness plots, ROC curves, gallery, corruption pictures; the page renders in
headless Chromium with every image displayed and no console error, and references nothing external."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from flawmap.cli import main

STUDY = """
study: mini
categories: [object]
resize: 64
crop: 0
max_train: 4
gallery: 1
method_params:
  patchcore: {backbone: efficientnet_lite0}
  padim: {backbone: efficientnet_lite0}
experiments:
  comparison: {methods: [patchcore, padim, not_yet_written]}
  patchcore_sweep:
    methods: {patchcore: {grid: {coreset_ratio: [0.1, 0.3], patch_size: [1, 3]}}}
  noise:
    methods: [patchcore]
    corruptions: [{name: gaussian_noise, severities: [1, 3], p: 0.5}]
"""
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def study_out(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("study")
    (tmp / "mini.yaml").write_text(STUDY)
    out = tmp / "out"
    capture = {}
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["bench", "--study", str(tmp / "mini.yaml"), "--data", str(synthetic_root), "--out", str(out),
                     "--threads", "1"])
    capture["stderr"] = err.getvalue()
    assert code == 0, capture["stderr"]
    return out, capture


def test_study_runs_shared_once_and_skips_unregistered(study_out) -> None:
    out, capture = study_out
    assert "not_yet_written" in capture["stderr"] and "not registered" in capture["stderr"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 7  # 2 comparison + 3 more sweep points + 2 noisy (the default PatchCore run is shared)
    shared = [r for r in rows if r["experiment"] == "comparison;noise;patchcore_sweep"]
    assert len(shared) == 1 and shared[0]["method"] == "patchcore"
    noisy = [r for r in rows if r["corruption"] == "gaussian_noise"]
    assert {(r["severity"], r["p"]) for r in noisy} == {("1", "0.5"), ("3", "0.5")}
    assert all(r["fit_key"] == shared[0]["run_key"] for r in noisy)  # one fit, three test sets
    sweep = [r for r in rows if "patchcore_sweep" in r["experiment"] and r["method"] == "patchcore"]
    assert sum(int(r["feature_cache_hits"]) > 0 for r in sweep) >= 2  # later sweep points reuse the features
    assert (out / "results.parquet").is_file()  # pyarrow is in the dev extra: never skipped
    assert (out / "report" / "index.html").is_file()  # a study writes its report


def test_report_tables_hold_the_stored_values(report: Path, study_out) -> None:
    """Every cell of the comparison and timing tables (CSV, Markdown) is the value of the stored run it shows."""
    out, _ = study_out
    stored = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))
              if "comparison" in r["experiment"].split(";") and r["corruption"] == "none"}
    assert sorted(stored) == ["padim", "patchcore"]
    md = (report / "report.md").read_text()
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
        header, *body = list(csv.reader(open(report / "tables" / f"{metric}.csv")))
        assert header == ["category", "patchcore", "padim"] and [r[0] for r in body] == ["object", "mean"]
        for row in body:  # one category: its row and the mean row both hold the stored value
            for method, cell in zip(header[1:], row[1:]):
                assert float(cell) == pytest.approx(float(stored[method][metric]), abs=1e-12), (metric, method, row)
        shown = [f"{float(stored[m][metric]):.3f}" for m in header[1:]]
        section = md.split(f"[{metric}.csv]")[0].rsplit("| category |", 1)[1]
        md_row = next(ln for ln in section.splitlines() if ln.startswith("| object |"))
        assert [c.strip().strip("*") for c in md_row.strip("|").split("|")[1:]] == shown, md_row
    header, *body = list(csv.reader(open(report / "tables" / "timing.csv")))
    assert header[:4] == ["method", "fit (s)", "inference (ms / image)", "peak RSS (MiB)"]
    for row in body:
        r = stored[row[0]]
        assert float(row[1]) == pytest.approx(float(r["fit_seconds"]), abs=1e-9)
        assert float(row[2]) == pytest.approx(float(r["predict_seconds_per_image"]) * 1000, rel=1e-9)
        assert float(row[3]) == pytest.approx(float(r["peak_rss_mb"]), abs=1e-9) and row[-1] == "1"


@pytest.fixture(scope="module")
def report(study_out, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out, _ = study_out
    dst = tmp_path_factory.mktemp("rep") / "report"
    assert main(["report", str(out / "results.sqlite"), "-o", str(dst)]) == 0
    return dst


def test_report_tables_and_pictures(report: Path, study_out) -> None:
    out, _ = study_out
    page = (report / "index.html").read_text()
    md = (report / "report.md").read_text()
    table = list(csv.reader(open(report / "tables" / "image_auroc.csv")))
    assert table[0] == ["category", "patchcore", "padim"] and [r[0] for r in table[1:]] == ["object", "mean"]
    for name in ("pixel_auroc.csv", "aupro.csv", "timing.csv", "results.csv"):
        assert (report / "tables" / name).is_file()
    assert 'class="best"' in page and re.search(r"\| object \|.*\*\*0\.\d{3}\*\*", md)  # best per row marked
    for img in ("study_patchcore_sweep_patchcore_coreset_ratio.png", "study_patchcore_sweep_patchcore_patch_size.png",
                "robustness_gaussian_noise.png", "roc_object.png", "timing.png"):
        assert (report / "img" / img).is_file(), img
    assert (report / "corruptions" / "gaussian_noise_s3.png").is_file()
    assert len(list((report / "corruptions").glob("catalogue_*_s5.png"))) == 6  # every corruption pictured
    assert len(list((report / "gallery").rglob("*.png"))) == 2 * 3  # 2 methods x (best, worst, borderline)
    assert "Fit and inference time per method" in page and "fit (s)" in page
    # the comparison says which of its settings are not the paper's (here the smaller backbone)
    assert "patchcore: backbone=efficientnet_lite0 (default efficientnet_lite2)" in md
    assert "coreset_ratio=" not in md.split("## Fit and inference time")[0]  # defaults are not listed
    # offline: no scheme or protocol-relative URL, every picture is a file inside the report folder
    assert not re.search(r"(https?:)?//", page.replace("<!DOCTYPE html>", ""))
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) > 10 and all((report / s).is_file() for s in srcs)
    # the report is the same from the CSV and from the bench folder (the store's details are used)
    for src in (out / "results.csv", out):
        other = report.parent / f"from_{Path(src).name}"
        assert main(["report", str(src), "-o", str(other)]) == 0
        assert (other / "tables" / "image_auroc.csv").read_text() == (report / "tables" / "image_auroc.csv").read_text()
        assert (other / "img" / "roc_object.png").is_file()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("headless Chromium is needed for this test: apt-get install -y chromium (bash scripts/test installs it)")


CHECK = """<script>window.__errs=[];
window.addEventListener('error',function(e){window.__errs.push(String(e.message||(e.target&&(e.target.src||e.target.href))||'error'))},true);
['error','warn'].forEach(function(k){var o=console[k];console[k]=function(){window.__errs.push(k+': '+Array.from(arguments).join(' '));o.apply(console,arguments)}});
window.addEventListener('load',function(){var im=Array.from(document.images);
document.documentElement.setAttribute('data-check',JSON.stringify({images:im.length,
shown:im.filter(function(i){return i.complete&&i.naturalWidth>0&&i.getBoundingClientRect().width>0}).length,errors:window.__errs}));});
</script>"""


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    page = (report / "index.html").read_text()
    probe = report / "_render_check.html"  # next to index.html so relative paths resolve the same
    probe.write_text(page.replace("<head>", "<head>" + CHECK, 1))
    try:
        res = subprocess.run([_chromium(), *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                              "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    m = re.search(r'data-check="([^"]*)"', res.stdout)
    assert m, f"page did not finish loading (rc {res.returncode}):\n{res.stderr[-3000:]}"
    check = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["errors"] == []
    assert check["images"] > 10 and check["shown"] == check["images"], check
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], console


MINI = """
study: tiny
categories: [object]
resize: 64
crop: 0
max_train: 3
gallery: 1
method_params:
  patchcore: {backbone: efficientnet_lite0}
experiments:
  noise:
    methods: [patchcore]
    corruptions: [{name: gaussian_noise, severities: [2], p: 1.0}]
"""


def test_report_builds_from_the_bench_folder_alone(tmp_path: Path) -> None:
    """The corruption pictures are written at bench time; the report copies them and reads no dataset."""
    from flawmap.data import make_synthetic_mvtec
    from flawmap.data.corruptions import CORRUPTIONS

    data = tmp_path / "data"
    make_synthetic_mvtec(data, categories=("object",), n_train=3, n_test_good=2, n_test_defect=2, size=64, seed=1)
    (tmp_path / "tiny.yaml").write_text(MINI)
    out = tmp_path / "out"
    assert main(["bench", "--study", str(tmp_path / "tiny.yaml"), "--data", str(data), "--out", str(out),
                 "--threads", "1", "--no-report"]) == 0
    pics = out / "artifacts" / "corruptions"
    stored = {p.name: p.read_bytes() for p in pics.glob("*.png")}
    assert {"clean.png", "gaussian_noise_s2.png"} <= set(stored)
    assert {f"catalogue_{n}_s{s}.png" for n in CORRUPTIONS for s in (1, 3, 5)} <= set(stored)
    shutil.rmtree(data)  # the dataset is gone: the report must not need it
    rep = tmp_path / "report"
    assert main(["report", str(out), "-o", str(rep)]) == 0
    copied = {p.name: p.read_bytes() for p in (rep / "corruptions").glob("*.png")}
    assert copied == stored  # exactly the bench's pictures, every one of them shown
    page = (rep / "index.html").read_text()
    assert "Corruptions" in page and all(f'src="corruptions/catalogue_{n}_s5.png"' in page for n in CORRUPTIONS)
    rows = list(csv.DictReader(open(out / "results.csv")))
    header, *body = list(csv.reader(open(rep / "tables" / "robustness_gaussian_noise_image_auroc.csv")))
    assert header == ["image AUROC / severity", "0", "2"]
    by_sev = {r["severity"]: float(r["image_auroc"]) for r in rows}
    assert [float(v) for v in body[0][1:]] == pytest.approx([by_sev["0"], by_sev["2"]], abs=1e-12)
