"""One rule turns --resize / --crop into the Transform, and fit, bench and tune all use it
(flawmap.data.preprocessing): an unset value is the method's paper setting, crop 0 = no crop."""

from __future__ import annotations

import pytest

from flawmap.cli import _transform, build_parser, load_bench_study, tune_config
from flawmap.data import Transform, preprocessing
from flawmap.errors import ConfigError

PAPER = {"resize": 256, "crop": 224}  # every registered method's paper preprocessing today

#: (resize, crop) given by the user -> the Transform of the run
TABLE = [
    (None, None, Transform(256, 224)),
    (300, None, Transform(300, 224)),  # the paper crop is kept
    (None, 200, Transform(256, 200)),  # the paper resize is kept
    (None, 0, Transform(256, None)),  # 0 = no crop
    (300, 0, Transform(300, None)),
    (300, 280, Transform(300, 280)),
    (224, 224, Transform(224, 224)),
]
BAD = [
    (0, None, "resize must be an integer in \\[1, "),
    (-5, None, "resize must be an integer in \\[1, "),
    (None, -1, "crop must be an integer in \\[0, .*0 = no crop"),
    (200, None, "crop 224 must not exceed resize 200.*crop 0 for no crop"),
    (100, 150, "crop 150 must not exceed resize 100"),
]


def _flags(resize: int | None, crop: int | None) -> list[str]:
    return [*(["--resize", str(resize)] if resize is not None else []), *(["--crop", str(crop)] if crop is not None else [])]


def _fit(resize: int | None, crop: int | None) -> Transform:
    return _transform("patchcore", resize, crop)  # what cmd_fit uses


def _bench(resize: int | None, crop: int | None) -> Transform:
    args = build_parser().parse_args(["bench", "--methods", "patchcore,spade", "--categories", "object",
                                      *_flags(resize, crop)])
    study = load_bench_study(args)
    specs = [s for cfg in study.experiments.values() for s in cfg.expand("unused-root")]
    tfs = {s.transform() for s in specs}
    assert len(specs) == 2 and len(tfs) == 1
    return tfs.pop()


def _tune(resize: int | None, crop: int | None) -> Transform:
    return tune_config(build_parser().parse_args(["tune", "--method", "patchcore", *_flags(resize, crop)])).transform()


@pytest.mark.parametrize("command", [_fit, _bench, _tune], ids=["fit", "bench", "tune"])
@pytest.mark.parametrize("resize,crop,expected", TABLE)
def test_every_command_gets_the_same_transform(command, resize, crop, expected: Transform) -> None:
    assert preprocessing(PAPER, resize, crop) == expected
    assert command(resize, crop) == expected


@pytest.mark.parametrize("command", [_fit, _bench, _tune], ids=["fit", "bench", "tune"])
@pytest.mark.parametrize("resize,crop,match", BAD)
def test_bad_sizes_are_errors_in_every_command(command, resize, crop, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        command(resize, crop)


def test_bench_yaml_resize_crop_follow_the_same_rule(tmp_path) -> None:
    cfg = tmp_path / "b.yaml"
    cfg.write_text("categories: [object]\nmethods: [patchcore]\nresize: 300\n")
    study = load_bench_study(build_parser().parse_args(["bench", str(cfg)]))
    (spec,) = study.base.expand("unused-root")
    assert spec.transform() == Transform(300, 224)
    cfg.write_text("categories: [object]\nmethods: [patchcore]\ncrop: 0\n")
    study = load_bench_study(build_parser().parse_args(["bench", str(cfg)]))
    (spec,) = study.base.expand("unused-root")
    assert spec.transform() == Transform(256, None)


@pytest.mark.parametrize("aspect", [None, "stretch", "pad"])
def test_every_command_gets_the_same_aspect(aspect) -> None:
    expected = Transform(256, None, aspect or "stretch")
    flag = ["--aspect", aspect] if aspect else []
    assert preprocessing(PAPER, None, 0, aspect) == expected
    assert _transform("patchcore", None, 0, None, aspect) == expected  # fit
    args = build_parser().parse_args(["fit", "--method", "patchcore", "--train", "x", "--out", "y", "--crop", "0", *flag])
    assert _transform(args.method, args.resize, args.crop, args.preset, args.aspect) == expected
    args = build_parser().parse_args(["bench", "--methods", "patchcore,spade", "--categories", "object", "--crop", "0",
                                      *flag])
    specs = [s for cfg in load_bench_study(args).experiments.values() for s in cfg.expand("unused-root")]
    assert {s.transform() for s in specs} == {expected}
    tune = tune_config(build_parser().parse_args(["tune", "--method", "patchcore", "--crop", "0", *flag]))
    assert tune.transform() == expected


def test_bad_aspect_is_an_error_listing_the_allowed_values(tmp_path) -> None:
    with pytest.raises(ConfigError, match="aspect='fit' is not allowed; allowed values: 'stretch', 'pad'"):
        preprocessing(PAPER, aspect="fit")
    cfg = tmp_path / "b.yaml"
    cfg.write_text("categories: [object]\nmethods: [patchcore]\naspect: fit\n")
    with pytest.raises(ConfigError, match="aspect='fit' is not allowed; allowed values: stretch, pad"):
        load_bench_study(build_parser().parse_args(["bench", str(cfg)]))
    with pytest.raises(SystemExit):  # argparse: invalid choice, exit code 2
        build_parser().parse_args(["bench", "--aspect", "fit"])


def test_bench_yaml_aspect_and_run_keys_of_stretch_runs_unchanged(tmp_path) -> None:
    cfg = tmp_path / "b.yaml"
    cfg.write_text("categories: [object]\nmethods: [patchcore]\naspect: pad\n")
    (spec,) = load_bench_study(build_parser().parse_args(["bench", str(cfg)])).base.expand("unused-root")
    assert spec.transform() == Transform(256, 224, "pad")
    cfg.write_text("categories: [object]\nmethods: [patchcore]\n")
    (plain,) = load_bench_study(build_parser().parse_args(["bench", str(cfg)])).base.expand("unused-root")
    assert plain.aspect is None and plain.transform().to_dict() == PAPER  # the run key's transform: as before
    assert spec.key() != plain.key()
