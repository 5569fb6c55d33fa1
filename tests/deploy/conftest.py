"""Fitted tiny models (synthetic 64 px images) saved as `flawmap fit` does, and their ONNX exports."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from flawmap.data import Transform

TF = Transform(resize=64)
#: per method: tiny parameters, fast enough for the test suite
PARAMS = {"patchcore": {"coreset_ratio": 0.5}, "padim": {}, "fastflow": {"epochs": 2, "batch_size": 4}}


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref|."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def fit_and_save(method: str, train: torch.Tensor, held_out: torch.Tensor, out: Path, tf: Transform = TF,
                 calibration: bool = True, **params: object) -> Path:
    """Fit ``method`` (tiny params), calibrate on held-out good images, save like `flawmap fit`."""
    from flawmap import get_detector
    from flawmap.metrics.thresholds import calibrate

    det = get_detector(method, **{**det_class(method).tiny_params(), **PARAMS.get(method, {}), **params}).fit(train)
    extra: dict[str, object] = {"transform": tf.to_dict()}
    if calibration:
        ref = det.predict(held_out)
        extra["calibration"] = calibrate(ref.scores, ref.maps, 0.2, source="held-out test images").to_dict()
    return det.save(out, extra=extra)


def det_class(method: str):
    from flawmap.registry import detector_class

    return detector_class(method)


@pytest.fixture(scope="session")
def model_dirs(tiny_data, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """method -> a saved model folder (fitted once per session) with transform and calibration."""
    train, test = tiny_data
    made: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in made:
            good = test.images[torch.from_numpy(test.labels == 0)]
            made[method] = fit_and_save(method, train.images, good, tmp_path_factory.mktemp("models") / method)
        return made[method]

    return get


@pytest.fixture(scope="session")
def exported(model_dirs) -> Callable[[str], Path]:
    """method -> the ONNX export of model_dirs(method) (exported once per session)."""
    from flawmap.deploy.export import export_model

    made: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in made:
            src = model_dirs(method)
            made[method] = export_model(src, src.parent / f"{method}.onnx")
        return made[method]

    return get
