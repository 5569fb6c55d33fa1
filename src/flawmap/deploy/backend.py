"""What every predictor backend shares (``deploy.predictor``: PyTorch model folder; ``deploy.runtime``: ONNX):
the ``Predictor`` protocol, the preprocessing of uploaded images, the model card and the decisions, so all
backends give the same verdict for the same image. Imports no torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
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


#: hex digits of a model id (a prefix of the SHA-256 of the model's files)
MODEL_ID_LENGTH = 16


def model_id(path: str | Path) -> str:
    """The content hash of a model: SHA-256 of an exported file, or of a model folder's config.json and
    model.safetensors (in that order); the first ``MODEL_ID_LENGTH`` hex digits. Two folders with the same
    bytes have the same id; any change to the tensors, calibration or preprocessing gives a new one."""
    p = Path(path)
    files = [p]
    if p.is_dir():  # a model folder (the ONNX path never imports the model-file module, which needs torch)
        from ..model_file import CONFIG_NAME, TENSORS_NAME

        files = [p / CONFIG_NAME, p / TENSORS_NAME]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:MODEL_ID_LENGTH]


def model_version(extra: dict[str, Any]) -> int:
    """The version stored by ``flawmap update`` (``extra.model_version``); 1 for a model as fitted."""
    v = extra.get("model_version", 1)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else 1


def model_card(method: str, params: dict[str, Any], transform: Any, calibration: Calibration | None,
               flawmap_version: str | None, fmt: str, *, model_id: str, model_version: int,
               **more: Any) -> dict[str, Any]:
    """The model card (``GET /v1/model``, ``flawmap predict -v``): model id and version, method, params,
    backbone, preprocessing, input size, calibration, flawmap version, file format, then ``more`` (e.g.
    onnxruntime providers)."""
    return {"model_id": model_id, "model_version": model_version,
            "method": method, "params": params, "backbone": params.get("backbone"),
            "preprocessing": transform.describe(), "input_size": list(transform.output_size),
            "calibration": None if calibration is None else calibration.to_dict(),
            "flawmap_version": flawmap_version, "format": fmt, **more}


__all__ = ["MODEL_ID_LENGTH", "Predictor", "Verdict", "calibration_of", "decide", "model_card", "model_id",
           "model_version", "preprocess"]
