"""CLI surface of bench / tune / report: help texts and clear errors for bad options."""

from __future__ import annotations

from pathlib import Path

import pytest

from flawmap.cli import main


@pytest.mark.parametrize("cmd", ["tune", "report"])
def test_help(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: flawmap " + cmd in capsys.readouterr().out


def test_bench_help_lists_new_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    for opt in ("--study", "--executor", "--address", "--workers", "--feature-cache", "--no-feature-cache",
                "--corruption", "--backbones", "--seeds", "--report", "--gallery", "--keep-going", "--threads",
                "--experiments"):
        assert opt in text, opt


@pytest.mark.parametrize("args, match", [
    (["--corruption", "fog:1"], "allowed: gaussian_noise"),
    (["--corruption", "jpeg:9"], "allowed values: 1, 2, 3, 4, 5"),
    (["--corruption", "jpeg:x"], "severities must be integers"),
    (["--study", "nope"], "unknown study preset 'nope'; available: seed"),
    (["--backbones", "vgg16"], "allowed: efficientnet_lite0"),
    (["--executor", "local", "--address", "auto"], "only used with --executor ray"),
    (["--study", "seed", "--experiments", "comparison,spade"], "unknown experiment(s) spade; allowed: comparison, spade_k"),
    (["--study", "seed", "--experiments", ","], "unknown experiment(s) (none given)"),
    (["--experiments", "comparison"], "--experiments needs a study"),
])
def test_bench_errors(args, match, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--data", str(synthetic_root), "--out", str(tmp_path), *args]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.sqlite" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{}")
    assert main(["report", str(tmp_path / "x.json")]) == 2
    assert "give results.sqlite, results.csv" in capsys.readouterr().err


def test_list_shows_corruptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert "misalignment" in capsys.readouterr().out


def test_experiments_keeps_only_the_named_ones_of_a_study(synthetic_root: Path) -> None:
    from flawmap.cli import build_parser, load_bench_study

    args = build_parser().parse_args(["bench", "--study", "seed", "--experiments", "spade_k,comparison",
                                      "--methods", "spade", "--data", str(synthetic_root), "--categories", "object"])
    study = load_bench_study(args)
    assert list(study.experiments) == ["comparison", "spade_k"]  # the study's order
    specs, tags = study.expand(str(synthetic_root))
    assert {s.method for s in specs} == {"spade"} and len(specs) == 6  # K in 1..100; K=50 shared with comparison
    assert sorted(tags[next(s.key() for s in specs if s.params.get("k", 50) == 50)]) == ["comparison", "spade_k"]
