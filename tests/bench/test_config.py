"""Bench configs: validation lists allowed keys/values; grid x variants x backbones x seeds x corruptions;
studies (experiments, shared runs, unregistered methods skipped); the `seed` preset."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flawmap.bench.config import load_study, parse_config, parse_study, preset_path, validate_specs
from flawmap.errors import ConfigError
from flawmap.registry import detector_class, list_detectors

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("raw, match", [
    ({"colour": 1}, "allowed: data, categories, methods"),
    ({"methods": {"patchcore": {"grid": {"coreset": [0.1]}}}}, "allowed: backbone, layers"),
    ({"methods": {"patchcore": {"sweep": {}}}}, "allowed: params, grid, variants"),
    ({"methods": ["nope"]}, "unknown method 'nope'; available: "),
    ({"corruptions": [{"name": "fog"}]}, "allowed: gaussian_noise, salt_pepper, gaussian_blur, jpeg"),
    ({"corruptions": [{"name": "jpeg", "severities": [0, 6]}]}, "allowed values: 1, 2, 3, 4, 5"),
    ({"corruptions": [{"name": "jpeg", "p": 2}]}, r"allowed: \(0, 1\]"),
    ({"corruptions": [{"name": "jpeg", "prob": 0.3}]}, "allowed: name, severities, p, seed"),
    ({"executor": "dask"}, "allowed values: local, ray"),
    ({"backbones": ["vgg"]}, "allowed: efficientnet_lite0"),
    ({"seeds": [-1]}, "integer >= 0"),
])
def test_errors_list_allowed(raw, match) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_bad_value_is_caught_before_running(synthetic_root) -> None:
    cfg = parse_config({"methods": {"patchcore": {"grid": {"patch_size": [3, 4]}}}})
    with pytest.raises(ConfigError, match="patch_size must be odd"):
        validate_specs(cfg.expand(str(synthetic_root)))


def test_expand_grid_variants_backbones_seeds_corruptions(synthetic_root) -> None:
    cfg = parse_config({
        "categories": ["object"],
        "backbones": ["efficientnet_lite0", "efficientnet_lite2"],
        "seeds": [0, 1],
        "methods": {
            "patchcore": {"grid": {"patch_size": [1, 3]}},
            "padim": {"variants": [{"backbone": "efficientnet_lite0", "layers": ["blocks.1", "blocks.2"]},
                                   {"backbone": "efficientnet_lite2", "layers": ["blocks.2", "blocks.4"]}]},
        },
        "corruptions": [{"name": "gaussian_noise", "severities": [1, 5], "p": 0.3}],
    })
    specs = cfg.expand(str(synthetic_root))
    pc = [s for s in specs if s.method == "patchcore"]
    pd = [s for s in specs if s.method == "padim"]
    assert len(pc) == 2 * 2 * 2 * 3  # backbones x patch sizes x seeds x (clean + 2 severities)
    assert len(pd) == 2 * 2 * 3  # variants (backbones not crossed: set by the variants) x seeds x 3
    assert {s.params["layers"] for s in pd} == {("blocks.1", "blocks.2"), ("blocks.2", "blocks.4")}
    assert len({s.key() for s in specs}) == len(specs)
    clean = [s for s in pc if s.corruption is None]
    noisy = [s for s in pc if s.corruption]
    assert {(s.severity, s.p) for s in noisy} == {(1, 0.3), (5, 0.3)}
    # a corrupted run shares its fit with the clean one; clean keys do not change with the new fields
    assert {s.fit_key() for s in noisy} == {s.key() for s in clean}
    no_clean = parse_config({"categories": ["object"], "clean": False,
                             "corruptions": [{"name": "jpeg", "severities": [2]}]}).expand(str(synthetic_root))
    assert [(s.corruption, s.severity, s.p) for s in no_clean] == [("jpeg", 2, 1.0)]


def test_study_shares_runs_and_skips_unregistered(synthetic_root, caplog: pytest.LogCaptureFixture) -> None:
    raw = {
        "study": "mini",
        "categories": ["object"],
        "method_params": {"patchcore": {"backbone": "efficientnet_lite0"}},
        "experiments": {
            "comparison": {"methods": ["patchcore", "not_yet_written"]},
            "sweep": {"methods": {"patchcore": {"grid": {"coreset_ratio": [0.1, 0.01]}}}},
            "future": {"methods": ["not_yet_written"]},
        },
    }
    with caplog.at_level(logging.WARNING):
        study = parse_study(raw)
    assert list(study.experiments) == ["comparison", "sweep"]
    assert any("not_yet_written" in m for m in study.skipped)
    assert "not registered" in caplog.text
    specs, tags = study.expand(str(synthetic_root))
    assert len(specs) == 2  # the default coreset_ratio=0.1 run serves both experiments
    assert all(s.params["backbone"] == "efficientnet_lite0" for s in specs)
    shared = next(s for s in specs if s.params.get("coreset_ratio", 0.1) == 0.1)
    assert sorted(tags[shared.key()]) == ["comparison", "sweep"]
    with pytest.raises(ConfigError, match="allowed: categories, methods"):
        parse_study({"experiments": {"x": {"out": "elsewhere", "methods": ["patchcore"]}}})


def test_seed_preset_names_real_parameters(synthetic_root) -> None:
    path = preset_path("seed")
    assert path == REPO / "src" / "flawmap" / "configs" / "study_seed.yaml"
    study = load_study(path)
    assert study.is_study and study.name == "seed"
    expected = {"comparison", "spade_k", "padim_backbone_layers", "patchcore_patch_coreset", "riad_image_batch",
                "fastflow_batch_steps", "noise_robustness"}
    # experiments whose methods are not registered yet are skipped, the others are all there
    assert set(study.experiments) <= expected
    for name, cfg in study.experiments.items():
        for m, mc in cfg.methods.items():
            allowed = set(detector_class(m).param_names())
            assert set(mc.params) | set(mc.grid) | {k for v in mc.variants for k in v} <= allowed, (name, m)
    if {"patchcore", "spade", "padim", "fastflow", "riad"} <= set(list_detectors()):
        assert set(study.experiments) == expected
    specs, tags = study.expand(str(synthetic_root))
    validate_specs(specs)
    noisy = [s for s in specs if s.corruption]
    assert noisy and {s.p for s in noisy} == {0.3}
    with pytest.raises(ConfigError, match="available: seed"):
        preset_path("nope")


def test_seed_preset_from_a_non_editable_install(tmp_path: Path) -> None:
    """The presets are package data: `--study seed` works from an installed copy, run from another folder."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, timeout=300)
    code = ("import flawmap, pathlib; from flawmap.bench.config import load_study, preset_path; "
            f"assert pathlib.Path(flawmap.__file__).is_relative_to({str(target)!r}), flawmap.__file__; "
            "p = preset_path('seed'); s = load_study(p); print(p); print(s.name, sorted(s.experiments))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    path, line = out.stdout.splitlines()
    assert Path(path).is_relative_to(target) and line.startswith("seed [")
    assert "comparison" in line
