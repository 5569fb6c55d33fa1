"""The on-disk feature cache: a second run that shares backbone, weights, layers and images does not
run the backbone and gets identical features and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flawmap import get_detector
from flawmap.components.backbones import FeatureExtractor, create_backbone
from flawmap.components.features import active_cache, extract_features, feature_cache


@pytest.fixture()
def count_forward(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = FeatureExtractor.forward

    def counting(self, x):
        calls[0] += 1
        return original(self, x)

    monkeypatch.setattr(FeatureExtractor, "forward", counting)
    return calls


def test_second_patchcore_run_reuses_features(tiny_data, tmp_path: Path, count_forward: list[int]) -> None:
    train, test = tiny_data
    train_x, test_x = train.images[:4], test.images
    params = {"backbone": "efficientnet_lite0", "batch_size": 4}
    plain = get_detector("patchcore", coreset_ratio=0.2, **params).fit(train_x).predict(test_x)  # no cache
    n_plain = count_forward[0]
    assert n_plain > 0
    with feature_cache(tmp_path / "cache") as cache:
        get_detector("patchcore", coreset_ratio=0.5, **params).fit(train_x).predict(test_x)
        assert count_forward[0] == 2 * n_plain and cache.stats.misses > 0 and cache.stats.hits == 0
        second = get_detector("patchcore", coreset_ratio=0.2, **params).fit(train_x).predict(test_x)
        assert count_forward[0] == 2 * n_plain, "the second run (another coreset_ratio) called the backbone"
        assert cache.stats.hits == cache.stats.misses
    assert active_cache() is None  # the context restores the previous setting
    # features read from the cache give exactly the results of computed ones
    np.testing.assert_array_equal(second.scores, plain.scores)
    np.testing.assert_array_equal(second.maps, plain.maps)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temporary file


def test_key_covers_layers_images_and_damage(tiny_data, tmp_path: Path, count_forward: list[int]) -> None:
    train, _ = tiny_data
    x = train.images[:3]
    bb = create_backbone("efficientnet_lite0", ["blocks.2", "blocks.4"])
    ref = extract_features(bb, x)
    with feature_cache(tmp_path) as cache:
        a = extract_features(bb, x)
        n = count_forward[0]
        b = extract_features(bb, x)
        assert count_forward[0] == n  # hit
        for k in ref:
            assert torch.equal(a[k], ref[k]) and torch.equal(b[k], ref[k])
        # a subset of the layers is served per layer from the same entries
        sub = create_backbone("efficientnet_lite0", ["blocks.4"])
        c = extract_features(sub, x)
        assert count_forward[0] == n and torch.equal(c["blocks.4"], ref["blocks.4"])
        # other images (one pixel changed) are a miss
        y = x.clone()
        y[0, 0, 0, 0] += 0.01
        extract_features(bb, y)
        assert count_forward[0] == n + 1
        # a damaged entry is recomputed and replaced, never returned
        files = sorted(tmp_path.rglob("*.safetensors"))
        assert len(files) == 4 and cache.stats.misses == 4
        for f in files:
            f.write_bytes(b"garbage")
        d = extract_features(bb, x)
        assert count_forward[0] == n + 2
        assert all(torch.equal(d[k], ref[k]) for k in ref)
