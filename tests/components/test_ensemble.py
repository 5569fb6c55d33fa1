"""Backbone ensembles (components/ensemble.py): one module for several backbones, per-member blocks."""

from __future__ import annotations

import pytest
import torch

from flawmap.components.ensemble import BackboneEnsemble, block_scales, create_ensemble, member_features


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_ensemble_is_a_feature_extractor_with_member_prefixed_layers() -> None:
    ens = create_ensemble(["efficientnet_lite0", "mobilenet_v2"], weights="random")
    assert isinstance(ens, BackboneEnsemble)
    assert ens.layers == ("0/blocks.2", "0/blocks.4", "1/features.6", "1/features.13")
    assert ens.name == "efficientnet_lite0+mobilenet_v2" and ens.weights_id.count("+") == 1
    x = torch.rand(2, 3, 64, 64)
    feats = ens(x)
    assert list(feats) == list(ens.layers)
    torch.testing.assert_close(feats["1/features.6"], ens.members[1](x)["features.6"])
    groups = member_features(feats)
    assert [len(g) for g in groups] == [2, 2] and groups[1][0].shape == (2, 32, 8, 8)
    plain = ens.members[0](x)
    assert [len(g) for g in member_features(plain)] == [2]  # one plain backbone: one member


def test_block_scales_give_every_block_unit_total_variance() -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.cat([5.0 + 30.0 * torch.randn(5000, 3, generator=g), 0.1 * torch.randn(5000, 7, generator=g)], 1)
    s = block_scales(bank, [3, 7], chunk=777)  # chunked moments: same as the whole-bank variance
    for blk, sc in zip(torch.split(bank, [3, 7], dim=1), s):
        assert float((blk * sc).var(0, unbiased=False).sum()) == pytest.approx(1.0, rel=1e-4)
    assert s.dtype == torch.float32 and s.shape == (2,)
