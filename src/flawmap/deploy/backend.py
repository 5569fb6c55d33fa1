"""What every predictor backend shares (``deploy.predictor``: PyTorch model folder; ``deploy.runtime``: ONNX):
the ``Predictor`` protocol, the preprocessing of uploaded images, the model card and the decisions, so all
backends give the same verdict for the same image. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from ..errors import ModelFileError
from ..metrics.thresholds import Calibration


@dataclass(frozen=True)
class Verdict:
    """The decision for one image: raw score, normalised score in [0, 1] (threshold at 0.5), verdict."""

    score: float
    normalized_score: float | None
    anomalous: bool | None
    threshold: float | None


class Predictor(Protocol):
    """What every backend provides (see the module docstring)."""

    method: str
    transform: Any  # flawmap.data.Transform
    calibration: Calibration | None
    card: dict[str, Any]  # method, params, backbone, preprocessing, calibration, flawmap version

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def decide(self, scores: np.ndarray) -> list[Verdict]: ...


def preprocess(transform: Any, images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 (H, W, 3) images -> (N, 3, H', W') float32 in [0, 1] with the model's Transform."""
    return np.stack([transform.to_array(img) for img in images])  # numpy: no torch on the ONNX path


def decide(calibration: Calibration | None, scores: np.ndarray) -> list[Verdict]:
    """Verdicts for raw image scores; without a calibration only the raw score is known."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if calibration is None:
        return [Verdict(float(v), None, None, None) for v in s]
    norm, anom = calibration.normalize(s), calibration.decide(s)
    return [Verdict(float(v), float(n), bool(a), calibration.image_threshold) for v, n, a in zip(s, norm, anom)]


def calibration_of(extra: dict[str, Any], where: str) -> Calibration | None:
    """The calibration stored in a model's ``extra`` metadata, None when the model has none."""
    d = extra.get("calibration")
    if d is None or isinstance(d, str):  # older models stored a description string only
        return None
    try:
        return Calibration.from_dict(d)
    except Exception as exc:  # ConfigError: a hand-edited or foreign file
        raise ModelFileError(f"{where}: {exc}") from None


def model_card(method: str, params: dict[str, Any], transform: Any, calibration: Calibration | None,
               flawmap_version: str | None, fmt: str, **more: Any) -> dict[str, Any]:
    """The model card (``GET /v1/model``, ``flawmap predict -v``): method, params, backbone, preprocessing,
    input size, calibration, flawmap version, file format, then ``more`` (e.g. onnxruntime providers)."""
    return {"method": method, "params": params, "backbone": params.get("backbone"),
            "preprocessing": transform.describe(), "input_size": list(transform.output_size),
            "calibration": None if calibration is None else calibration.to_dict(),
            "flawmap_version": flawmap_version, "format": fmt, **more}


__all__ = ["Predictor", "Verdict", "calibration_of", "decide", "model_card", "preprocess"]
