"""The default `flawmap bench` (no CONFIG, no --study): five methods with cpu-quick presets on the embedded
data, marked in the table, report written and printed as a file:// URI, --open opens it (nothing else does)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from flawmap.bench.config import validate_specs
from flawmap.bench.defaults import CPU_QUICK
from flawmap.cli import build_parser, load_bench_study, main
from flawmap.data import make_synthetic_mvtec
from flawmap.data.synthetic import DEFAULT_CATEGORIES
from flawmap.presets import get_preset, preset_of
from flawmap.registry import detector_class

FIVE = ["patchcore", "padim", "spade", "fastflow", "riad"]


def test_default_config_is_five_methods_cpu_quick_on_three_categories(tmp_path: Path) -> None:
    study = load_bench_study(build_parser().parse_args(["bench"]))
    assert list(study.experiments) == [CPU_QUICK] and not study.is_study
    cfg = study.experiments[CPU_QUICK]
    assert sorted(cfg.methods) == sorted(FIVE) and cfg.data is None and cfg.report is True and cfg.preset == CPU_QUICK
    for m, mc in cfg.methods.items():
        assert not mc.params and not mc.grid and not mc.variants  # the preset carries the settings
    CPU_QUICK_PARAMS = {m: get_preset(CPU_QUICK).params_for(m) for m in FIVE}
    assert CPU_QUICK_PARAMS["patchcore"] == {} and CPU_QUICK_PARAMS["padim"] == {}  # as the paper
    assert CPU_QUICK_PARAMS["fastflow"]["epochs"] < detector_class("fastflow").default_params()["epochs"]
    assert CPU_QUICK_PARAMS["riad"]["epochs"] < detector_class("riad").default_params()["epochs"]
    assert DEFAULT_CATEGORIES == ("texture", "object", "hard")
    root = make_synthetic_mvtec(tmp_path, categories=DEFAULT_CATEGORIES, n_train=1, n_test_good=1, n_test_defect=0,
                                size=32)
    specs, tags = study.expand(str(root))
    assert sorted({(s.category, s.method) for s in specs}) == sorted((c, m) for c in DEFAULT_CATEGORIES for m in FIVE)
    assert len(specs) == 15 and all(t == [CPU_QUICK] for t in tags.values())
    assert {s.transform().to_dict()["resize"] for s in specs} == {256}  # each method's paper preprocessing
    for s in specs:  # every run carries the preset's hyperparameters
        assert all(s.params[k] == v for k, v in CPU_QUICK_PARAMS[s.method].items())
    validate_specs(specs)  # every preset value is allowed


def test_preset_labels_and_changes() -> None:
    CPU_QUICK_PARAMS = {m: get_preset(CPU_QUICK).params_for(m) for m in FIVE}
    preset_changes = get_preset(CPU_QUICK).changes
    for m in FIVE:
        defaults = detector_class(m).default_params()
        assert preset_of(m, dict(defaults)) == "paper"
        quick = {**defaults, **{k: list(v) if isinstance(v, tuple) else v for k, v in CPU_QUICK_PARAMS[m].items()}}
        assert preset_of(m, quick) == ("cpu-quick" if CPU_QUICK_PARAMS[m] else "paper")
        assert preset_of(m, {**quick, "sigma" if "sigma" in defaults else "epochs": 123}) == "custom"
        assert preset_of(m, {**defaults, "device": "cpu", "seed": 7}) == "paper"
    assert preset_changes("fastflow") == "epochs=3 (paper 500)"
    assert preset_changes("padim") == "paper settings"
    assert "grid_sizes=(2,4,8) (paper (2,4,8,16))" in preset_changes("riad")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import webbrowser

    calls: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: calls.append(url) or True)
    return calls


def test_reduced_default_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str], opened: list[str]) -> None:
    """The default configuration, reduced to 2 methods, tiny images and one hard category."""
    data = make_synthetic_mvtec(tmp_path / "data", categories=("hard",), n_train=4, n_test_good=2, n_test_defect=3,
                                size=64)
    out = tmp_path / "res"
    args = ["--no-progress", "bench", "--data", str(data), "--methods", "patchcore,spade", "--resize", "64",
            "--crop", "0", "--gallery", "0", "--out", str(out)]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    index = (out / "report" / "index.html").resolve()
    assert lines[-1] == f"report: {index.as_uri()}" and index.is_file()  # the report, as the last line
    assert opened == []  # no browser without --open
    head = next(i for i, ln in enumerate(lines) if ln.startswith("method"))
    assert lines[head].split()[:3] == ["method", "category", "preset"]
    table = {ln.split()[0]: ln.split() for ln in lines[head + 2:head + 4]}
    assert table["patchcore"][2] == "paper" and table["spade"][2] == "cpu-quick"
    note = next(ln for ln in lines if ln.startswith("preset cpu-quick"))
    assert "NOT the papers' settings" in note and "spade: k=5 (paper 50)" in note
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"patchcore", "spade"} and {r["experiment"] for r in rows} == {CPU_QUICK}
    assert "not the paper" in index.read_text()  # the report says these are not paper settings
    assert main([*args, "--open"]) == 0  # finished runs are skipped; the report is rebuilt and opened
    assert opened == [index.as_uri()]
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"report: {index.as_uri()}"


def test_no_report_no_uri(tmp_path: Path, capsys: pytest.CaptureFixture[str], opened: list[str]) -> None:
    data = make_synthetic_mvtec(tmp_path / "data", categories=("hard",), n_train=3, n_test_good=1, n_test_defect=2,
                                size=64)
    out = tmp_path / "res"
    assert main(["bench", "--no-progress", "--data", str(data), "--methods", "patchcore", "--resize", "64", "--crop",
                 "0", "--gallery", "0", "--no-report", "--open", "--out", str(out)]) == 0
    assert "file://" not in capsys.readouterr().out and not (out / "report").exists() and opened == []
