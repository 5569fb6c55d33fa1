import numpy as np
import pytest
import torch

from flawmap.errors import DataError
from flawmap.metrics import METRIC_KEYS, aupro, evaluate, f1_max, image_auroc, pixel_auroc, pixel_f1_max


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 0, 1])
    masks = np.zeros((6, 16, 16), bool)
    masks[2, 2:6, 2:6] = masks[3, 8:12, 1:3] = masks[5, 0:3, 10:16] = True
    maps = (rng.random(masks.shape) + masks * rng.random(masks.shape)).astype(np.float32)
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    return labels, scores, masks, maps


def test_values_match_individual_metrics() -> None:
    labels, scores, masks, maps = _data()
    out = evaluate(labels, scores, masks, maps)
    assert tuple(out) == METRIC_KEYS
    assert out["image_auroc"] == pytest.approx(8 / 9)  # one of 9 pairs inverted (0.4 > 0.35)
    assert out["image_auroc"] == image_auroc(labels, scores)
    assert out["image_f1"] == f1_max(labels, scores)[0]
    assert out["pixel_auroc"] == pixel_auroc(masks, maps)
    assert out["aupro"] == aupro(masks, maps)
    assert out["pixel_f1"] == pixel_f1_max(masks, maps)[0]
    assert 0.5 < out["pixel_auroc"] < 1.0 and 0.0 < out["aupro"] < 1.0
    tensors = evaluate(*(torch.from_numpy(x) for x in (labels, scores, masks, maps)))
    assert tensors == out


def test_unavailable_metrics_are_none() -> None:
    labels, scores, masks, maps = _data()
    out = evaluate(labels, scores, None, maps)
    assert out["pixel_auroc"] is None and out["aupro"] is None and out["pixel_f1"] is None
    assert out["image_auroc"] == pytest.approx(8 / 9)
    out = evaluate(np.zeros(6, int), scores, np.zeros_like(masks), maps)
    assert all(v is None for v in out.values())
    out = evaluate(np.ones(6, int), scores, masks, maps)
    assert out["image_auroc"] is None and out["image_f1"] == 1.0 and out["aupro"] is not None


def test_shape_mismatch() -> None:
    labels, scores, masks, maps = _data()
    with pytest.raises(DataError, match=r"\(6, 16, 16\).*\(6, 16, 8\)"):
        evaluate(labels, scores, masks, maps[:, :, :8])
    with pytest.raises(DataError, match="5 labels"):
        evaluate(labels[:5], scores[:5], masks, maps)
