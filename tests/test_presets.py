"""Presets (flawmap.presets): one mechanism for Python, fit, bench (flags and YAML), tune and `flawmap list`;
an explicit parameter always wins over a preset, a preset over the paper defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flawmap import get_detector
from flawmap.bench.config import load_study
from flawmap.bench.tune import load_tune_config
from flawmap.cli import build_parser, load_bench_study, main, tune_config
from flawmap.data import make_synthetic_mvtec
from flawmap.errors import ConfigError
from flawmap.presets import (
    CPU_QUICK,
    FAST,
    FAST_CPU,
    PAPER,
    Preset,
    get_preset,
    list_presets,
    preset_of,
    preset_params,
    preset_transform,
)
from flawmap.registry import detector_class, list_detectors


def test_every_preset_names_registered_methods_and_allowed_values() -> None:
    assert list_presets()[0] == PAPER and {CPU_QUICK, FAST} <= set(list_presets())
    for name in list_presets():
        p = get_preset(name)
        assert set(p.params) <= set(list_detectors()) and set(p.preprocessing) <= set(list_detectors())
        for m in list_detectors():
            det = get_detector(m, preset=name)
            det.validate_params()  # every preset value is allowed
            preset_transform(name, m).validate()
    assert get_preset(None) is get_preset(PAPER)
    assert all(not get_preset(PAPER).params_for(m) for m in list_detectors())


def test_unknown_preset_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'fastest'; allowed: paper, cpu-quick, fast"):
        get_preset("fastest")
    with pytest.raises(ConfigError, match="unknown preset"):
        get_detector("patchcore", preset="nope")


def test_explicit_params_win_over_the_preset_and_preset_over_paper() -> None:
    det = get_detector("fastflow", preset=FAST, patience=3)
    assert det.patience == 3 and det.val_fraction == get_preset(FAST).params_for("fastflow")["val_fraction"] > 0
    assert det.epochs == detector_class("fastflow").default_params()["epochs"]  # fast keeps the paper's budget
    assert get_detector("spade", preset=CPU_QUICK).k == 5 and get_detector("spade", preset=CPU_QUICK, k=7).k == 7
    assert preset_params(CPU_QUICK, "spade", {"kappa": 2}) == {"k": 5, "kappa": 2}
    with pytest.raises(ConfigError, match="unknown parameter"):  # a typo is still refused under a preset
        get_detector("spade", preset=CPU_QUICK, kk=3)


def test_preset_preprocessing_and_explicit_resize_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    import flawmap.presets as presets

    custom = Preset("test-big", "bigger images", params={"patchcore": {"patch_size": 5}},
                    preprocessing={"patchcore": {"resize": 320, "crop": 0}})
    monkeypatch.setitem(presets._PRESETS, custom.name, custom)
    assert preset_transform("test-big", "patchcore").to_dict() == {"resize": 320, "crop": None}
    assert preset_transform("test-big", "patchcore", resize=288).to_dict() == {"resize": 288, "crop": None}
    assert preset_transform("test-big", "padim").to_dict() == {"resize": 256, "crop": 224}  # not named: paper
    assert "resize=320 (paper 256)" in custom.changes("patchcore") and custom.changes("padim") == "paper settings"
    # bench: the preset's preprocessing goes into every run of that method; an explicit resize wins
    cfg = load_study_from({"methods": ["patchcore", "padim"], "preset": "test-big"}, monkeypatch)
    by = {s.method: s for s in cfg}
    assert by["patchcore"].transform().to_dict() == {"resize": 320, "crop": None}
    assert by["patchcore"].params["patch_size"] == 5 and by["padim"].transform().to_dict()["resize"] == 256
    cfg = load_study_from({"methods": ["patchcore"], "preset": "test-big", "resize": 300}, monkeypatch)
    assert cfg[0].transform().to_dict()["resize"] == 300


def test_preset_aspect_reaches_every_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import flawmap.presets as presets

    tall = Preset("test-tall", "letterboxed", preprocessing={"patchcore": {"aspect": "pad", "crop": 0}})
    monkeypatch.setitem(presets._PRESETS, tall.name, tall)
    assert preset_transform("test-tall", "patchcore").to_dict() == {"resize": 256, "crop": None, "aspect": "pad"}
    assert preset_transform("test-tall", "patchcore", aspect="stretch").aspect == "stretch"  # explicit wins
    assert "aspect=pad (paper stretch)" in tall.changes("patchcore")
    specs = load_study_from({"methods": ["patchcore", "padim"], "preset": "test-tall"}, monkeypatch)
    assert {s.method: s.transform().aspect for s in specs} == {"patchcore": "pad", "padim": "stretch"}
    specs = load_study_from({"methods": ["patchcore"], "preset": "test-tall", "aspect": "stretch"}, monkeypatch)
    assert specs[0].transform() == preset_transform(None, "patchcore", crop=0)  # the config's aspect wins
    args = build_parser().parse_args(["tune", "--method", "patchcore", "--preset", "test-tall"])
    assert tune_config(args).transform().aspect == "pad"


def load_study_from(raw: dict, monkeypatch: pytest.MonkeyPatch, tmp: Path | None = None):
    import tempfile

    d = Path(tempfile.mkdtemp())
    path = d / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    root = make_synthetic_mvtec(d / "data", categories=("texture",), n_train=1, n_test_good=1, n_test_defect=0, size=32)
    specs, _ = load_study(path).expand(str(root))
    return specs


def test_yaml_preset_key_is_validated_and_per_experiment(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"methods": ["spade"], "preset": "quick"}))
    with pytest.raises(ConfigError, match="unknown preset 'quick'"):
        load_study(bad)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"methods": ["spade"], "experiments": {
        "a": {"methods": ["spade"]}, "b": {"methods": {"spade": {"params": {"kappa": 2}}}, "preset": CPU_QUICK}}}))
    root = make_synthetic_mvtec(tmp_path / "data", categories=("texture",), n_train=1, n_test_good=1, n_test_defect=0,
                                size=32)
    specs, tags = load_study(study).expand(str(root))
    ks = {(s.params.get("k"), s.params.get("kappa")) for s in specs}
    assert ks == {(None, None), (5, 2)}


def test_bench_flag_sets_the_preset_of_every_experiment_and_param_wins() -> None:
    args = build_parser().parse_args(["bench", "--preset", FAST, "--param", "fastflow.patience=4"])
    study = load_bench_study(args)
    cfg = next(iter(study.experiments.values()))
    assert cfg.preset == FAST and cfg.name == FAST
    args = build_parser().parse_args(["bench", "--study", "seed", "--preset", FAST])
    assert {c.preset for c in load_bench_study(args).experiments.values()} == {FAST}
    with pytest.raises(ConfigError, match="unknown preset"):
        load_bench_study(build_parser().parse_args(["bench", "--preset", "warp"]))


def test_tune_preset_fixes_values_except_searched_ones() -> None:
    cfg = load_tune_config(overrides={"method": "spade", "preset": CPU_QUICK}, search={"kappa": [1, 2]})
    assert cfg.params["k"] == 5 and "kappa" not in cfg.params
    cfg = load_tune_config(overrides={"method": "spade", "preset": CPU_QUICK}, search={"k": [1, 2]})
    assert "k" not in cfg.params  # searched: the preset does not fix it
    cfg = load_tune_config(overrides={"method": "spade", "preset": CPU_QUICK}, params={"k": 9}, search={"kappa": [1, 2]})
    assert cfg.params["k"] == 9
    with pytest.raises(ConfigError, match="unknown preset"):
        load_tune_config(overrides={"method": "spade", "preset": "x"}, search={"k": [1, 2]}).transform()


def test_preset_of_rows() -> None:
    d = detector_class("fastflow").default_params()
    assert preset_of("fastflow", d) == PAPER
    assert preset_of("fastflow", {**d, **get_preset(FAST).params_for("fastflow")}) == FAST
    assert preset_of("fastflow", {**d, "epochs": 3}) == CPU_QUICK
    assert preset_of("fastflow", {**d, "epochs": 4}) == "custom"
    r = detector_class("riad").default_params()
    assert preset_of("riad", {**r, **get_preset(FAST_CPU).params_for("riad")}) == FAST_CPU
    assert preset_of("fastflow", {**d, **get_preset(FAST_CPU).params_for("fastflow")}) == FAST  # same as fast's


def test_fast_cpu_is_fast_with_a_cpu_sized_riad() -> None:
    fast, cpu = get_preset(FAST), get_preset(FAST_CPU)
    for m in list_detectors():  # the same stopping rule for every trained method
        assert {k: v for k, v in cpu.params_for(m).items() if k in ("val_fraction", "patience")} == fast.params_for(m)
    assert cpu.params_for("fastflow") == fast.params_for("fastflow")
    det = get_detector("riad", preset=FAST_CPU)
    assert (det.image_size, det.base_channels, det.depth, det.val_fraction) == (64, 16, 3, 0.1)
    assert "NOT the paper" in cpu.description


def test_cli_fit_preset_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_synthetic_mvtec(tmp_path / "d", categories=("texture",), n_train=10, n_test_good=1, n_test_defect=1,
                                size=48)
    out = tmp_path / "m"
    assert main(["--no-progress", "fit", "--method", "spade", "--preset", CPU_QUICK, "--param", "kappa=2", "--data",
                 str(root), "--category", "texture", "--resize", "48", "--crop", "0", "--out", str(out)]) == 0
    params = json.loads((out / "config.json").read_text())["params"]
    assert params["k"] == 5 and params["kappa"] == 2
    capsys.readouterr()
    assert main(["list", "--presets"]) == 0
    text = capsys.readouterr().out
    for name in list_presets():
        assert f"{name}: " in text
    assert "spade: k=5 (paper 50)" in text and "fastflow: val_fraction=0.1 (paper 0.0)" in text


def test_cli_fit_preset_accurate_fits_saves_and_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--preset accurate`: PatchCore with the stride-4 stage and rotation coverage fits on tiny data through the
    CLI, the saved model (safetensors + JSON) holds every preset value and loads and scores."""
    import numpy as np
    import torch

    from flawmap import load_detector
    from flawmap.presets import ACCURATE

    root = make_synthetic_mvtec(tmp_path / "d", categories=("object",), n_train=12, n_test_good=1, n_test_defect=1,
                                size=48)
    out = tmp_path / "m"
    assert main(["--no-progress", "fit", "--method", "patchcore", "--preset", ACCURATE, "--param", "coreset_ratio=0.5",
                 "--data", str(root), "--category", "object", "--resize", "48", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    want = get_preset(ACCURATE).params_for("patchcore")
    assert want, "the accurate preset changes PatchCore"
    for key, value in {**want, "coreset_ratio": 0.5}.items():  # every preset value is in the saved model (tuples as
        assert cfg["params"][key] == (list(value) if isinstance(value, tuple) else value), key  # JSON lists) ...
    assert want["coreset_ratio"] != 0.5  # ... but the explicit --param, which wins over the preset's
    tf = cfg["extra"]["transform"]
    pre = get_preset(ACCURATE).preprocessing_for("patchcore")
    assert tf["crop"] is None and tf["resize"] in (48, [48, 48])  # the preset's "no crop"; the explicit --resize wins
    if "aspect" in pre:
        assert tf["aspect"] == pre["aspect"]
    a = load_detector(out).predict(torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0)))
    assert np.isfinite(a.scores).all() and np.isfinite(a.maps).all() and a.maps.shape == (2, 48, 48)
    capsys.readouterr()
    assert main(["list", "--presets"]) == 0
    text = capsys.readouterr().out
    block = text.split("\naccurate: ")[1]
    for key, value in want.items():  # each change with the paper value it replaces, and the measured cost
        assert f"{key}=" in block and "(paper " in block, key
    assert "  cost: " in block and "ms/image" in block


def test_accurate_preset_on_bench_yaml_and_tune(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--preset accurate` / `preset: accurate` reach bench, sweep YAML, tune and Python alike."""
    from flawmap.presets import ACCURATE

    want = get_preset(ACCURATE).params_for("patchcore")
    assert want["train_rotations"] == 3 and len(want["layers"]) == 3  # what the ablation chose (docs/results.md)
    det = get_detector("patchcore", preset=ACCURATE, coreset_ratio=0.05)
    assert det.train_rotations == 3 and tuple(det.layers) == tuple(want["layers"]) and det.coreset_ratio == 0.05
    specs = load_study_from({"methods": ["patchcore", "padim"], "preset": ACCURATE}, monkeypatch)
    by = {s.method: s for s in specs}
    assert by["patchcore"].transform().to_dict() == {"resize": 256, "crop": None}
    assert by["patchcore"].params["train_rotations"] == 3
    assert by["padim"].transform().to_dict() == {"resize": 256, "crop": 224}  # not named by the preset: paper
    assert preset_of("patchcore", by["patchcore"].params) == ACCURATE
    args = build_parser().parse_args(["bench", "--preset", ACCURATE, "--methods", "patchcore"])
    assert next(iter(load_bench_study(args).experiments.values())).preset == ACCURATE
    cfg = load_tune_config(overrides={"method": "patchcore", "preset": ACCURATE}, search={"coreset_ratio": [0.01, 0.1]})
    assert cfg.params["train_rotations"] == 3 and "coreset_ratio" not in cfg.params
    assert cfg.transform().to_dict() == {"resize": 256, "crop": None}
