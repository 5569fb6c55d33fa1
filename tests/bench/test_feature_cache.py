"""The on-disk feature cache: a second run that shares backbone, weights, layers and images does not
run the backbone and gets identical features and scores; the cache is passed explicitly and a call
without one touches no file, whatever other threads do."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from flawmap import get_detector
from flawmap.components import features as features_mod
from flawmap.components.backbones import FeatureExtractor, create_backbone
from flawmap.components.features import FeatureCache, extract_features


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
    cache = FeatureCache(tmp_path / "cache")
    get_detector("patchcore", coreset_ratio=0.5, **params).use_feature_cache(cache).fit(train_x).predict(test_x)
    assert count_forward[0] == 2 * n_plain and cache.stats.misses > 0 and cache.stats.hits == 0
    second = get_detector("patchcore", coreset_ratio=0.2, **params).use_feature_cache(cache).fit(train_x).predict(test_x)
    assert count_forward[0] == 2 * n_plain, "the second run (another coreset_ratio) called the backbone"
    assert cache.stats.hits == cache.stats.misses
    # a detector without a cache computes again, even after others used one
    get_detector("patchcore", coreset_ratio=0.2, **params).fit(train_x).predict(test_x)
    assert count_forward[0] == 3 * n_plain
    # features read from the cache give exactly the results of computed ones
    np.testing.assert_array_equal(second.scores, plain.scores)
    np.testing.assert_array_equal(second.maps, plain.maps)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temporary file


def test_key_covers_layers_images_and_damage(tiny_data, tmp_path: Path, count_forward: list[int]) -> None:
    train, _ = tiny_data
    x = train.images[:3]
    bb = create_backbone("efficientnet_lite0", ["blocks.2", "blocks.4"])
    ref = extract_features(bb, x)
    cache = FeatureCache(tmp_path)
    a = extract_features(bb, x, cache=cache)
    n = count_forward[0]
    b = extract_features(bb, x, cache=cache)
    assert count_forward[0] == n  # hit
    for k in ref:
        assert torch.equal(a[k], ref[k]) and torch.equal(b[k], ref[k])
    # a subset of the layers is served per layer from the same entries
    sub = create_backbone("efficientnet_lite0", ["blocks.4"])
    c = extract_features(sub, x, cache=cache)
    assert count_forward[0] == n and torch.equal(c["blocks.4"], ref["blocks.4"])
    # other images (one pixel changed) are a miss
    y = x.clone()
    y[0, 0, 0, 0] += 0.01
    extract_features(bb, y, cache=cache)
    assert count_forward[0] == n + 1
    # a damaged entry is recomputed and replaced, never returned
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 4 and cache.stats.misses == 4
    for f in files:
        f.write_bytes(b"garbage")
    d = extract_features(bb, x, cache=cache)
    assert count_forward[0] == n + 2
    assert all(torch.equal(d[k], ref[k]) for k in ref)


def test_no_cache_means_no_file_io_even_while_another_thread_caches(tiny_data, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache in use elsewhere (another thread, another detector) never leaks into a call without one."""
    train, test = tiny_data
    io_threads: list[int] = []
    for name in ("load", "save"):
        original = getattr(FeatureCache, name)

        def record(self, *a, _original=original, **kw):
            io_threads.append(threading.get_ident())
            return _original(self, *a, **kw)

        monkeypatch.setattr(FeatureCache, name, record)
    opened: list[str] = []
    for name in ("safe_open", "save_file"):  # the module's only ways to the disk
        original = getattr(features_mod, name)

        def track(path, *a, _original=original, **kw):
            opened.append(str(path))
            return _original(path, *a, **kw)

        monkeypatch.setattr(features_mod, name, track)
    bb = create_backbone("efficientnet_lite0", ["blocks.2", "blocks.4"])
    cache = FeatureCache(tmp_path / "cache")
    started, release = threading.Event(), threading.Event()

    def other_thread() -> None:  # keeps using its cache while the main thread extracts without one
        extract_features(bb, train.images[:2], cache=cache)
        started.set()
        release.wait(60)
        extract_features(bb, train.images[2:4], cache=cache)

    t = threading.Thread(target=other_thread)
    t.start()
    assert started.wait(60)
    main = threading.get_ident()
    n_before = len(opened)
    feats = extract_features(bb, test.images[:2])
    det = get_detector("padim", backbone="efficientnet_lite0").fit(train.images[:3])
    det.predict(test.images[:2])
    assert len(opened) == n_before and main not in io_threads, "a call without a cache touched the disk"
    release.set()
    t.join(60)
    assert io_threads and all(i != main for i in io_threads)  # the other thread did use its cache
    files = {p.name for p in (tmp_path / "cache").rglob("*.safetensors")}
    digest = features_mod.images_digest(test.images[:2])
    keys = {FeatureCache.key(bb, layer, digest, tuple(test.images[:2].shape), test.images.dtype) for layer in feats}
    assert not {f"{k}.safetensors" for k in keys} & files and len(files) == 4  # 2 calls x 2 layers, all its own
