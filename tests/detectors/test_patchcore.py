"""PatchCore fit at scale: streamed bank, memory check before the backbone, owned kNN index, coreset modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flawmap import get_detector, load_detector
from flawmap.components import features as features_mod
from flawmap.errors import ConfigError


def _images(n: int, seed: int = 0, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size, size, generator=g)
    return ((base * 0.7 + 0.3 * torch.rand(n, 3, size, size, generator=g)) * 255).round().to(torch.uint8)


def test_bank_over_the_budget_is_refused_before_the_backbone_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = features_mod.extract_features

    def counting(backbone, images, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        return real(backbone, images, **kw)

    monkeypatch.setattr(features_mod, "extract_features", counting)  # the one feature path
    det = get_detector("patchcore", backbone="efficientnet_lite0", max_memory_gb=1e-4)
    with pytest.raises(ConfigError, match=r"--max-train.*--resize") as err:
        det.fit(_images(20))
    assert "20 training images x 64 patches" in str(err.value) and "GB" in str(err.value)
    assert calls == [1]  # only the one-image shape probe ran
    det.set_params(max_memory_gb=float("nan"))
    with pytest.raises(ConfigError, match="max_memory_gb"):
        det.fit(_images(2))


def test_uint8_input_is_streamed_and_scores_like_float_input() -> None:
    imgs = _images(12)
    a = get_detector("patchcore", backbone="efficientnet_lite0", coreset_ratio=0.25).fit(imgs)
    b = get_detector("patchcore", backbone="efficientnet_lite0", coreset_ratio=0.25).fit(imgs.float() / 255)
    torch.testing.assert_close(a.memory_bank_, b.memory_bank_)
    test = _images(3, seed=1)
    np.testing.assert_allclose(a.predict(test).scores, b.predict(test).scores, rtol=1e-6)


def test_owned_index_gives_the_brute_force_scores(tmp_path) -> None:  # type: ignore[no-untyped-def]
    imgs = _images(80)
    det = get_detector("patchcore", backbone="efficientnet_lite0", coreset_ratio=1.0, batch_size=16).fit(imgs)
    assert len(det.memory_bank_) >= 4096 and det._index is not None  # large CPU bank: pruned index
    test = _images(4, seed=2)
    fast = det.predict(test)
    det._index = None  # brute-force knn over the same bank
    slow = det.predict(test)
    np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-4)
    np.testing.assert_allclose(fast.maps, slow.maps, rtol=1e-4, atol=1e-4)
    det.save(tmp_path / "m")
    from flawmap import load_detector

    loaded = load_detector(tmp_path / "m")
    assert loaded._index is not None  # rebuilt from the saved bank, never saved itself
    np.testing.assert_allclose(loaded.predict(test).scores, fast.scores, rtol=1e-5)


def test_coreset_modes() -> None:
    imgs = _images(10)
    approx = get_detector("patchcore", backbone="efficientnet_lite0", coreset_mode="approx").fit(imgs)
    assert len(approx.memory_bank_) == round(0.1 * 10 * 64)
    with pytest.raises(ConfigError, match="'exact', 'approx'"):
        get_detector("patchcore", backbone="efficientnet_lite0", coreset_mode="fast").fit(imgs)


@pytest.mark.parametrize("layers", ["blocks.2", (), ("blocks.2", 3)])
def test_bad_layers_are_refused_before_the_backbone_is_built(layers) -> None:
    with pytest.raises(ConfigError, match=r"layers must be None \(the stride 8 and 16 layers\) or a non-empty tuple"):
        get_detector("patchcore", backbone="efficientnet_lite0", layers=layers).fit(_images(2))


# ---- rotations and ensembles ------------------------------------------------------------------
L0, MN = "efficientnet_lite0", "mobilenet_v2"


def _turn(x: torch.Tensor, quarter: int) -> torch.Tensor:
    return torch.rot90(x, quarter, dims=(-2, -1))


def test_test_rotations_score_a_turned_image_like_the_upright_one() -> None:
    """min over orientations: an image turned by 90 degrees finds, at its 270-degree rotation, exactly the
    patches of the upright image (whole bank kept), so its scores and (turned back) map are the upright's."""
    imgs = _images(4, size=48).float() / 255
    det = get_detector("patchcore", backbone=L0, coreset_ratio=1.0, test_rotations=3).fit(imgs)
    up, turned = det.predict(imgs[:2]), det.predict(_turn(imgs[:2], 1))
    np.testing.assert_allclose(turned.scores, up.scores, rtol=1e-5)
    np.testing.assert_allclose(np.rot90(turned.maps, -1, axes=(1, 2)), up.maps, rtol=1e-4, atol=1e-5)
    plain = get_detector("patchcore", backbone=L0, coreset_ratio=1.0).fit(imgs)
    assert (plain.predict(_turn(imgs[:2], 1)).scores > 5 * up.scores).all()  # without them: far from the bank
    np.testing.assert_allclose(plain.predict(imgs[:2]).scores, up.scores, rtol=1e-5)  # upright: unchanged


def test_train_rotations_put_the_turned_patches_in_the_bank() -> None:
    imgs = _images(4, size=48).float() / 255
    det = get_detector("patchcore", backbone=L0, coreset_ratio=1.0, train_rotations=3).fit(imgs)
    assert len(det.memory_bank_) == 4 * 4 * 36  # R + 1 = 4 orientations x 4 images x 6 x 6 patches
    plain = get_detector("patchcore", backbone=L0, coreset_ratio=1.0).fit(imgs)
    for q in (1, 2, 3):  # every turned patch is in the bank: distances at float round-off (~1e-2), not ~10
        turned = _turn(imgs[:2], q)
        assert (det.predict(turned).scores < 0.02 * plain.predict(turned).scores).all()
    ratio = get_detector("patchcore", backbone=L0, coreset_ratio=0.1, train_rotations=3).fit(imgs)
    assert len(ratio.memory_bank_) == round(0.1 * 4 * 4 * 36)  # the ratio applies to the enlarged bank


def test_rotations_off_the_quarter_turns_drop_the_corners_and_non_square_images_work() -> None:
    imgs = _images(3, size=64).float() / 255
    det = get_detector("patchcore", backbone=L0, coreset_ratio=1.0, train_rotations=7).fit(imgs)  # 45-degree steps
    n = 3 * 64  # patches per orientation (8 x 8 grid)
    assert 4 * n + 4 * 40 < len(det.memory_bank_) < 8 * n  # 4 quarter turns whole, 4 diagonal ones without corners
    tall = torch.rand(5, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    both = get_detector("patchcore", backbone=L0, coreset_ratio=1.0, train_rotations=1, test_rotations=3).fit(tall[:3])
    res = both.predict(tall[3:])
    assert res.maps.shape == (2, 64, 32) and np.isfinite(res.scores).all() and np.isfinite(res.maps).all()
    assert len(both.memory_bank_) == 2 * 3 * 8 * 4


def test_rotations_count_in_the_memory_check() -> None:
    det = get_detector("patchcore", backbone=L0, train_rotations=3, max_memory_gb=1e-4)
    with pytest.raises(ConfigError, match=r"20 training images x 4 orientations \(train_rotations\) x 64 patches"):
        det.fit(_images(20))


def test_ensemble_concatenates_members_with_unit_variance_blocks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    imgs, test = _images(6, size=48), _images(3, seed=5, size=48)
    det = get_detector("patchcore", backbone=(L0, MN), coreset_ratio=1.0, test_rotations=1).fit(imgs)
    assert det.memory_bank_.shape == (6 * 36, 152 + 128)  # lite0 40+112, mobilenet_v2 32+96 channels
    for blk in torch.split(det.memory_bank_, [152, 128], dim=1):  # whole bank kept: unit total variance each
        assert float(blk.var(0, unbiased=False).sum()) == pytest.approx(1.0, rel=1e-3)
    one = get_detector("patchcore", backbone=L0, coreset_ratio=1.0).fit(imgs)
    torch.testing.assert_close(det.memory_bank_[:, :152] / det.block_scale_[0], one.memory_bank_, rtol=1e-5, atol=1e-5)
    res = det.predict(test)
    det.save(tmp_path / "m")
    loaded = load_detector(tmp_path / "m")
    assert loaded.backbone == (L0, MN) and loaded.test_rotations == 1
    torch.testing.assert_close(loaded.block_scale_, det.block_scale_)
    np.testing.assert_array_equal(loaded.predict(test).scores, res.scores)
    np.testing.assert_array_equal(loaded.predict(test).maps, res.maps)


def test_scores_ensemble_averages_members_standardised_on_their_training_scores(tmp_path) -> None:  # type: ignore[no-untyped-def]
    imgs, test = _images(6, size=48), _images(3, seed=5, size=48)
    det = get_detector("patchcore", backbone=(L0, MN), ensemble="scores", coreset_ratio=0.5).fit(imgs)
    z_scores, z_maps = [], []
    for name in (L0, MN):  # the same as separate PatchCores, each standardised by its own training outputs
        one = get_detector("patchcore", backbone=name, coreset_ratio=0.5).fit(imgs)
        own, new = one.predict(imgs), one.predict(test)
        z_scores.append((new.scores - own.scores.mean()) / (own.scores.std() + 1e-12))
        z_maps.append((new.maps - own.maps.mean()) / (own.maps.std() + 1e-12))
    res = det.predict(test)
    np.testing.assert_allclose(res.scores, np.mean(z_scores, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.maps, np.mean(z_maps, 0), rtol=1e-4, atol=1e-5)
    assert det.member_stats_.shape == (2, 4) and not hasattr(det, "memory_bank_")
    det.save(tmp_path / "m")
    loaded = load_detector(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(test).scores, res.scores)
    np.testing.assert_array_equal(loaded.predict(test).maps, res.maps)
    from flawmap.deploy.export import graph_forward

    with pytest.raises(ConfigError, match="ensemble='scores'.*cannot be exported.*ensemble='concat'"):
        graph_forward(loaded)


@pytest.mark.parametrize("params,match", [
    ({"backbone": (L0, MN), "ensemble": "mean"}, r"ensemble='mean' is not allowed; allowed values: 'concat', 'scores'"),
    ({"backbone": (L0, "vgg16")}, r"backbone='vgg16' is not allowed; allowed values: 'efficientnet_lite0'.*'mobilenet_v2'"),
    ({"backbone": (L0,)}, r"at least two distinct backbones from 'efficientnet_lite0'"),
    ({"backbone": (L0, L0)}, "at least two distinct"),
    ({"backbone": (L0, MN), "layers": ("blocks.2",)}, "layers must be None with an ensemble"),
    ({"backbone": (L0, MN), "weights": "/x.pth"},
     r"weights \(of an ensemble\)='/x.pth' is not allowed; allowed values: 'imagenet', 'random'"),
    ({"train_rotations": -1}, r"train_rotations=-1 is out of range; allowed: \[0, 35\]"),
    ({"test_rotations": 36}, r"test_rotations=36 is out of range; allowed: \[0, 35\]"),
    ({"test_rotations": 1.5}, "test_rotations must be an integer"),
])
def test_rotation_and_ensemble_parameters_are_validated(params, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        get_detector("patchcore", **{"backbone": L0, **params}).fit(_images(2))


def test_f_agg_counts_cells_outside_the_map_as_zeros() -> None:
    """The reference code averages a zero-padded unfold: on a constant map the corners get 4/9, the edges 6/9."""
    det = get_detector("patchcore", patch_size=3)
    feats = {"a": torch.ones(1, 2, 4, 5)}
    det.agg_padding_ = "zeros"  # what fit sets
    emb = det._embed(feats)[0, ..., 0]  # (h, w)
    assert emb[0, 0] == pytest.approx(4 / 9) and emb[0, 2] == pytest.approx(6 / 9) and emb[1, 1] == pytest.approx(1)
    det.agg_padding_ = "valid"  # models saved before the rule
    assert torch.allclose(det._embed(feats), torch.ones(1, 4, 5, 2))
