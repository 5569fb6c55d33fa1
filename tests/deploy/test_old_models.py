"""Model folders saved before `normalization`, PatchCore's `agg_padding_` and `Transform.aspect` existed
(flawmap 0.1.0, tests/deploy/old_models) load as before and give the scores they gave."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flawmap.data import Transform, load_image
from flawmap.deploy.predictor import TorchPredictor

OLD = Path(__file__).parent / "old_models" / "v0.1.0"


@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_old_model_folder_loads_and_scores_as_before(method: str) -> None:
    expected = json.loads((OLD / "expected.json").read_text())
    config = json.loads((OLD / method / "config.json").read_text())
    assert "normalization" not in config["params"] and "aspect" not in config["extra"]["transform"]  # really old
    pred = TorchPredictor(OLD / method, device="cpu")
    assert pred.transform == Transform(64, None, "stretch") and pred.card["preprocessing"]["aspect"] == "stretch"
    assert pred.detector.normalization == "weights"
    if method == "patchcore":
        assert pred.detector.agg_padding_ == "valid"  # the f_agg border rule it was fitted with
    x = pred.preprocess([load_image(OLD / "images" / n) for n in expected["images"]])
    scores, maps = pred.raw(x)
    np.testing.assert_allclose(scores, expected[method]["scores"], rtol=1e-4)
    np.testing.assert_allclose(maps.reshape(len(maps), -1).max(1), expected[method]["map_max"], rtol=1e-4)


def test_a_new_patchcore_fit_records_its_border_rule(tmp_path: Path) -> None:
    import torch

    from flawmap import get_detector
    from flawmap.base import load_detector

    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    det = get_detector("patchcore", backbone="efficientnet_lite0", coreset_ratio=0.5).fit(x)
    assert det.agg_padding_ == "zeros"
    det.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["state"]["agg_padding_"] == "zeros"
    again = load_detector(tmp_path / "m", device="cpu")
    assert again.agg_padding_ == "zeros"
    np.testing.assert_allclose(again.predict(x).scores, det.predict(x).scores, rtol=1e-5)
