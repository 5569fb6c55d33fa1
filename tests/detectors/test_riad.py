"""RIAD: paper defaults, presets, parameters, precision, inpainting at test time, checkpoint resume and save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flawmap import get_detector, load_detector
from flawmap.detectors.riad import RIAD
from flawmap.errors import ConfigError
from flawmap.presets import list_presets

TINY = {"image_size": 32, "grid_sizes": (2, 4), "base_channels": 4, "depth": 2, "epochs": 2, "batch_size": 4,
        "lr": 1e-3, "smoothing": 3, "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images(tiny_data):
    train, test = tiny_data
    return train.images[:6], test


PAPER = {"image_size": 256, "grid_sizes": (2, 4, 8, 16), "n_masks": 3, "base_channels": 64, "depth": 4,
         "epochs": 300, "batch_size": 8, "lr": 1e-4, "smoothing": 21}


def test_defaults_are_the_paper_and_presets_live_in_flawmap_presets():
    d = RIAD.default_params()
    assert {k: d[k] for k in PAPER} == PAPER
    assert d["n_masks"] == 3 and d["ssim_weight"] == d["gms_weight"] == 1.0
    import flawmap.detectors.riad as riad_module

    assert not hasattr(riad_module, "PRESETS") and not hasattr(riad_module, "PRESETS_COST")  # one mechanism
    for name in list_presets():
        get_detector("riad", preset=name).validate_params()
    fast = get_detector("riad", preset="fast")  # the paper's network and budget, early stopping added
    assert {k: getattr(fast, k) for k in PAPER} == PAPER and fast.val_fraction == 0.1 and fast.patience == 10


@pytest.mark.parametrize("bad,match", [({"image_size": 30}, "multiple of"), ({"grid_sizes": ()}, "grid_sizes"),
                                        ({"grid_sizes": (2, 64)}, r"grid_sizes\[i\]"), ({"n_masks": 1}, "n_masks"),
                                        ({"smoothing": 0}, "smoothing"),
                                        ({"precision": "fp16"}, "precision=.fp16. is not allowed; allowed values: .auto.")])
def test_bad_params(bad, match, images):
    with pytest.raises(ConfigError, match=match):
        get_detector("riad", **{**TINY, **bad}).fit(images[0][:2])


def test_fit_resume_save_load(images, tmp_path):
    train, test = images
    det = get_detector("riad", **TINY, checkpoint_dir=str(tmp_path / "ck")).fit(train)
    assert len(det.train_losses_) == 2 and not det.net_.training
    res = det.predict(test.images)
    assert res.maps.shape == (len(test.images), 64, 64)  # maps back at the input size
    np.testing.assert_allclose(res.scores, res.maps.reshape(len(res.maps), -1).max(1))
    again = get_detector("riad", **TINY, checkpoint_dir=str(tmp_path / "ck")).fit(train)
    assert again.train_report.resumed_from == 2
    np.testing.assert_array_equal(again.predict(test.images).scores, res.scores)
    loaded = load_detector(det.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.predict(test.images).maps, res.maps)


def test_test_masks_fixed_and_train_masks_seeded(images):
    det = RIAD(**TINY)
    m = det._test_masks(4)
    assert m.shape == (1, 3, 32, 32) and torch.equal(m, det._test_masks(4)) and not torch.equal(m, det._test_masks(2))
    a = det._train_masks(5, torch.Generator().manual_seed(0))
    assert torch.equal(a, det._train_masks(5, torch.Generator().manual_seed(0)))
    assert torch.equal(a.sum(1), torch.ones(5, 32, 32))


def test_bfloat16_predict_close_to_float32(images):
    """The same fitted weights scored under bfloat16 autocast and in float32: nearly the same maps."""
    train, test = images
    det = get_detector("riad", **{**TINY, "precision": "float32"}).fit(train)
    ref = det.predict(test.images)
    det.precision = "bfloat16"
    low = det.predict(test.images)
    assert np.abs(low.maps - ref.maps).max() < 0.05 * ref.maps.max()
    assert np.corrcoef(low.scores, ref.scores)[0, 1] > 0.9
    bf = get_detector("riad", **{**TINY, "precision": "bfloat16"}).fit(train)  # trained under autocast
    assert all(np.isfinite(bf.train_losses_)) and abs(bf.train_losses_[0] - det.train_losses_[0]) < 0.05
