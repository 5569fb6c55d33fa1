"""The command line end to end on small synthetic data, including bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from flawmap.cli import build_parser, main

FAST = ["--param", "backbone=efficientnet_lite0", "--resize", "64", "--crop", "0"]


def _copy(root: Path, dst: Path) -> Path:
    shutil.copytree(root, dst)
    return dst


def test_every_option_is_documented() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"flawmap {name}: option {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("argv,verbose,no_progress", [
    (["list"], False, False),
    (["--no-progress", "list"], False, True),
    (["list", "--no-progress"], False, True),
    (["bench", "--no-progress", "-v"], True, True),
    (["-v", "bench", "--no-progress"], True, True),
    (["--no-progress", "-v", "tune"], True, True),
])
def test_global_flags_before_or_after_the_command(argv: list[str], verbose: bool, no_progress: bool) -> None:
    args = build_parser().parse_args(argv)
    assert (args.verbose, args.no_progress) == (verbose, no_progress)


def test_no_progress_after_the_command_turns_bars_off(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import flawmap.progress as progress

    seen: list[bool | None] = []
    monkeypatch.setattr(progress, "set_progress", seen.append)
    assert main(["list", "--no-progress"]) == 0 and main(["list"]) == 0
    assert seen == [False, True]


@pytest.mark.parametrize("cmd", ["fit", "predict", "test", "bench", "list"])
def test_help(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: flawmap " + cmd in capsys.readouterr().out


def test_bench_writes_table_and_resumes(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--data", str(synthetic_root), "--categories", "object", "--methods", "patchcore",
            "--grid", "coreset_ratio=[0.05,0.2]", "--max-train", "6", "--out", str(tmp_path / "res"), *FAST]
    assert main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "res" / "results.csv")))
    assert len(rows) == 2 and {r["coreset_ratio"] for r in rows} == {"0.05", "0.2"}
    for col in ("method", "category", "backbone", "image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1",
                "fit_seconds", "predict_seconds_per_image", "peak_rss_mb", "patch_size", "num_neighbors"):
        assert col in rows[0]
    assert float(rows[0]["image_auroc"]) > 0.8
    capsys.readouterr()
    assert main(args) == 0  # second run: nothing left to do
    assert "2 already finished" in capsys.readouterr().out
    assert len(list(csv.DictReader(open(tmp_path / "res" / "results.csv")))) == 2


def test_bench_unknown_param_lists_allowed(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--data", str(synthetic_root), "--methods", "patchcore", "--param", "patchcore.coreset=0.1",
                 "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "coreset_ratio" in err and "unknown parameter" in err


def test_fit_predict_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flawmap.data import make_synthetic_mvtec

    # 24 good images: 8 held out for calibration, 16 to train on
    synthetic_root = make_synthetic_mvtec(tmp_path / "data", categories=("object",), n_train=24, n_test_good=3,
                                          n_test_defect=5, size=128, seed=0)
    model = tmp_path / "model"
    assert main(["fit", "--data", str(synthetic_root), "--category", "object", "--out", str(model), *FAST]) == 0
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()
    test_dir = synthetic_root / "object" / "test"
    one = next((test_dir / "good").iterdir())
    out = tmp_path / "heat"
    assert main(["predict", str(model), str(one), str(test_dir / "scratch"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 1 + len(list((test_dir / "scratch").iterdir()))
    assert all((out / r["overlay"]).is_file() for r in rows)
    capsys.readouterr()
    assert main(["test", str(model), "--data", str(synthetic_root), "--category", "object"]) == 0
    header, rule, *body = capsys.readouterr().out.strip().splitlines()
    assert set(rule) <= {"-", " "} and len(body) == 2 and body[1].startswith("stored decision")
    row = dict(zip(header.split(), body[0].split(), strict=True))
    assert (row["method"], row["category"], row["backbone"]) == ("patchcore", "object", "efficientnet_lite0")
    metrics = {k: float(row[k]) for k in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1",
                                          "false_alarm_rate", "miss_rate")}  # no n/a
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    assert metrics["image_auroc"] > 0.8 and metrics["pixel_auroc"] > 0.8, metrics
    assert float(row["predict_seconds_per_image"]) > 0


def test_corrupt_train_image_leaves_no_model(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy(synthetic_root, tmp_path / "data")
    bad = sorted((root / "object" / "train" / "good").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated PNG
    model = tmp_path / "model"
    code = main(["fit", "--data", str(root), "--category", "object", "--out", str(model), *FAST])
    assert code == 2
    assert bad.name in capsys.readouterr().err
    assert not model.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]


@pytest.mark.parametrize("problem", ["wrong_mask_size", "missing_mask", "empty_train", "non_image"])
def test_bad_dataset_fails_clearly_and_writes_no_results(problem: str, synthetic_root: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    root = _copy(synthetic_root, tmp_path / "data")
    cat = root / "object"
    mask = sorted((cat / "ground_truth" / "scratch").iterdir())[0]
    if problem == "wrong_mask_size":
        Image.new("L", (17, 9)).save(mask)
        culprit = mask.name
    elif problem == "missing_mask":
        mask.unlink()
        culprit = mask.name.replace("_mask", "")
    elif problem == "empty_train":
        for f in (cat / "train" / "good").iterdir():
            f.unlink()
        culprit = "train"
    else:
        (cat / "train" / "good" / "notes.txt").write_text("hello")
        culprit = "notes.txt"
    out = tmp_path / "res"
    code = main(["bench", "--data", str(root), "--categories", "object", "--out", str(out), *FAST])
    assert code == 2
    assert culprit in capsys.readouterr().err
    assert not (out / "results.csv").exists()
