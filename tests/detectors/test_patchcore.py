"""PatchCore fit at scale: streamed bank, memory check before the backbone, owned kNN index, coreset modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flawmap import get_detector
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


def test_f_agg_counts_cells_outside_the_map_as_zeros() -> None:
    """The reference code averages a zero-padded unfold: on a constant map the corners get 4/9, the edges 6/9."""
    det = get_detector("patchcore", patch_size=3)
    feats = {"a": torch.ones(1, 2, 4, 5)}
    det.agg_padding_ = "zeros"  # what fit sets
    emb = det._embed(feats)[0, ..., 0]  # (h, w)
    assert emb[0, 0] == pytest.approx(4 / 9) and emb[0, 2] == pytest.approx(6 / 9) and emb[1, 1] == pytest.approx(1)
    det.agg_padding_ = "valid"  # models saved before the rule
    assert torch.allclose(det._embed(feats), torch.ones(1, 4, 5, 2))
