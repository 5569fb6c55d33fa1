"""FastFlow: parameters, feature cache, checkpoint resume, save/load, map orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flawmap import get_detector, load_detector
from flawmap.detectors.fastflow import HIDDEN_RATIO, FastFlow
from flawmap.errors import ConfigError

TINY = {"backbone": "efficientnet_lite0", "epochs": 2, "batch_size": 4, "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core box: OpenMP spin-waits make 2 threads slower
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images(tiny_data):
    train, test = tiny_data
    return train.images[:6], test


def test_defaults_are_the_papers():
    d = FastFlow.default_params()
    assert (d["flow_steps"], d["lr"], d["weight_decay"], d["batch_size"], d["epochs"]) == (8, 1e-3, 1e-5, 32, 500)
    assert HIDDEN_RATIO["resnet18"] == 1.0 and HIDDEN_RATIO["wide_resnet50_2"] == 0.16
    assert d["hidden_ratio"] is None and d["cache_features"] is True


@pytest.mark.parametrize("bad,match", [({"backbone": "vgg"}, "allowed"), ({"anomaly_map": "x"}, "'prob', 'nll'"),
                                        ({"flow_steps": 0}, "flow_steps"), ({"val_fraction": 0.9}, "val_fraction"),
                                        ({"layers": ("nope",)}, "layers")])
def test_bad_params(bad, match, images):
    with pytest.raises(ConfigError, match=match):
        get_detector("fastflow", **{**TINY, **bad}).fit(images[0][:2])


def test_fit_resume_save_load(images, tmp_path):
    train, test = images
    det = get_detector("fastflow", **TINY, checkpoint_dir=str(tmp_path / "ck")).fit(train)
    assert det.train_report.resumed_from == 0 and len(det.train_losses_) == 2
    assert len(det.flow_.flows) == 3 and len(det.flow_.flows[0].steps) == 8  # strides 4, 8, 16; K = 8
    res = det.predict(test.images)
    again = get_detector("fastflow", **TINY, checkpoint_dir=str(tmp_path / "ck")).fit(train)
    assert again.train_report.resumed_from == 2 and again.train_report.epoch_seconds == []
    np.testing.assert_array_equal(again.predict(test.images).scores, res.scores)
    loaded = load_detector(det.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.predict(test.images).maps, res.maps)
    assert (res.maps <= 0).all() and (res.maps >= -1).all()  # -mean_l p_l, p_l in (0, 1]
    big = torch.nn.functional.interpolate(test.images[:2], size=(96, 96), mode="bilinear")
    assert det.predict(big).maps.shape == (2, 96, 96)  # other sizes are resized to the training size


def test_cache_and_recompute_train_alike(images):
    train, _ = images
    a = get_detector("fastflow", **{**TINY, "epochs": 1}).fit(train)
    b = get_detector("fastflow", **{**TINY, "epochs": 1, "cache_features": False}).fit(train)
    assert a.train_losses_[0] == pytest.approx(b.train_losses_[0], rel=1e-4)


def test_nll_map_and_validation_split(images):
    train, test = images
    det = get_detector("fastflow", **{**TINY, "anomaly_map": "nll", "val_fraction": 0.34, "patience": 1}).fit(train)
    assert len(det.val_losses_) >= 1
    res = det.predict(test.images[:2])
    assert (res.maps >= 0).all() and np.allclose(res.scores, res.maps.reshape(2, -1).max(1))


def test_backbone_runs_once_per_fit_not_per_epoch(images, monkeypatch):
    """cache_features: the frozen backbone sees each training image once per fit, whatever the epochs."""
    from flawmap.components.backbones import FeatureExtractor

    train, _ = images
    seen = []
    forward = FeatureExtractor.forward

    def counting(self, x):
        seen.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(FeatureExtractor, "forward", counting)
    for epochs in (1, 3):
        seen.clear()
        get_detector("fastflow", **{**TINY, "epochs": epochs, "val_fraction": 0.34}).fit(train)
        assert seen == [1, 4, 2]  # the shape probe, then the 6 images in batches of batch_size = 4


def test_precision_is_validated_and_trains_in_float32_state(images):
    train, test = images
    with pytest.raises(ConfigError, match="'auto', 'float32', 'bfloat16', 'float16'"):
        get_detector("fastflow", **TINY, precision="half").fit(train)
    det = get_detector("fastflow", **{**TINY, "epochs": 1, "precision": "bfloat16"}).fit(train)
    assert all(p.dtype == torch.float32 for p in det.flow_.parameters())
    assert det.flow_.flows[0].steps[0].subnet[0].weight.is_contiguous(memory_format=det.flow_.memory_format)
    res = det.predict(test.images[:2])  # prediction runs in float32
    assert res.maps.dtype == np.float32 and np.isfinite(res.maps).all()


def test_early_stopping_on_held_out_maps(images):
    """stop_on="maps" (default): stops once the held-out maps' ranking moved <= map_tolerance over `patience`
    epochs; map_tolerance=2 (the largest possible change) stops as soon as there is a change to compare."""
    train, test = images
    det = get_detector("fastflow", **{**TINY, "epochs": 6, "val_fraction": 0.34, "patience": 1,
                                      "map_tolerance": 2.0}).fit(train)
    rep = det.train_report
    assert rep.stopped_early and rep.epochs_done == 2 and rep.map_changes[0] is None and 0 <= rep.map_changes[1] <= 2
    strict = get_detector("fastflow", **{**TINY, "epochs": 3, "val_fraction": 0.34, "patience": 1,
                                         "map_tolerance": 0.0}).fit(train)
    assert not strict.train_report.stopped_early and strict.train_report.epochs_done == 3
    loss_rule = get_detector("fastflow", **{**TINY, "epochs": 3, "val_fraction": 0.34, "patience": 1,
                                            "stop_on": "loss"}).fit(train)
    assert loss_rule.train_report.map_changes == []
    n = len(loss_rule.val_losses_)  # the maps rule's held-out loss (from its maps pass) is the loss rule's
    assert n >= 2 and strict.val_losses_[:n] == pytest.approx(loss_rule.val_losses_, rel=1e-5)
    with pytest.raises(ConfigError, match="stop_on.*allowed.*loss.*maps"):
        get_detector("fastflow", **{**TINY, "stop_on": "scores"}).fit(train)
    with pytest.raises(ConfigError, match="map_tolerance"):
        get_detector("fastflow", **{**TINY, "map_tolerance": -1.0}).fit(train)


def test_flow_layout_is_the_same_function_and_follows_the_device_rule(images):
    from flawmap.components.precision import channels_last_helps
    from flawmap.detectors.fastflow import FastFlowModel

    train, _ = images
    det = get_detector("fastflow", **{**TINY, "epochs": 1}).fit(train)
    assert det.flow_.memory_format == (torch.channels_last if channels_last_helps(torch.device("cpu"))
                                       else torch.contiguous_format)
    shapes = [(8, 8, 8), (16, 4, 4)]
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, *s, generator=g) for s in shapes]
    a = FastFlowModel(shapes, 2, 1.0, 2.0, seed=0)
    b = FastFlowModel(shapes, 2, 1.0, 2.0, seed=0)
    b.load_state_dict(a.state_dict())
    b.set_layout(True)
    (_, nll_a), (zb, nll_b) = a(feats), b(feats)
    assert zb[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nll_b, nll_a, rtol=1e-5, atol=1e-3)
