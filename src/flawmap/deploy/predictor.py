"""One inference path for every consumer (``flawmap predict``, ``flawmap serve``, Python users).

A *predictor* wraps a fitted model and its stored preprocessing and calibration:

    pred = open_predictor("runs/bottle")               # a model folder (PyTorch)
    x = pred.preprocess([img_uint8_hwc, ...])          # (N, 3, H, W) float32 in [0, 1], the model's Transform
    scores, maps = pred.raw(x)                         # (N,), (N, H, W) float32 raw detector outputs
    verdicts = pred.decide(scores)                     # list[Verdict] (needs a calibration)

Every backend (PyTorch model folder here, ONNX runtime in ``deploy.runtime``) implements ``raw``; the
preprocessing and the decisions are shared, so all backends give the same verdict for the same image.
This module imports no torch at import time.
"""

from __future__ import annotations

import hashlib
import json
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

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


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


#: hex digits of a model id (a prefix of the SHA-256 of the model's files)
MODEL_ID_LENGTH = 16


def model_id(path: str | Path) -> str:
    """The content hash of a model: SHA-256 of an exported file, or of a model folder's config.json and
    model.safetensors (in that order); the first ``MODEL_ID_LENGTH`` hex digits. Two folders with the same
    bytes have the same id; any change to the tensors, calibration or preprocessing gives a new one."""
    p = Path(path)
    files = [p]
    if p.is_dir():  # a model folder (base imports torch: not on the ONNX path)
        from ..base import CONFIG_NAME, TENSORS_NAME

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


def calibration_of(extra: dict[str, Any], where: str) -> Calibration | None:
    """The calibration stored in a model's ``extra`` metadata, None when the model has none."""
    d = extra.get("calibration")
    if d is None or isinstance(d, str):  # older models stored a description string only
        return None
    try:
        return Calibration.from_dict(d)
    except Exception as exc:  # ConfigError: a hand-edited or foreign file
        raise ModelFileError(f"{where}: {exc}") from None


class TorchPredictor:
    """A model folder written by ``flawmap fit`` (config.json + model.safetensors), run with PyTorch."""

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        from ..base import load_detector, read_model_config
        from ..data import Transform

        self.path = Path(path)
        cfg = read_model_config(self.path)
        extra = cfg.get("extra", {})
        if "transform" not in extra:
            raise ModelFileError(f"{self.path}: the model records no preprocessing (extra.transform); refit it "
                                 "with `flawmap fit`")
        self.method: str = cfg["detector"]
        self.transform = Transform.from_dict(extra["transform"])
        self.calibration = calibration_of(extra, str(self.path))
        self.detector = load_detector(self.path, device=device)
        self.device = str(self.detector.device_)  # where raw runs (reported by `flawmap serve`)
        self.model_id, self.model_version = model_id(self.path), model_version(extra)
        self.card = {"model_id": self.model_id, "model_version": self.model_version, "method": self.method, "params": cfg["params"], "backbone": cfg["params"].get("backbone"),
                     "preprocessing": self.transform.describe(), "input_size": list(self.transform.output_size),
                     "calibration": None if self.calibration is None else self.calibration.to_dict(),
                     "flawmap_version": cfg.get("flawmap_version"), "format": "flawmap-folder"}

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return preprocess(self.transform, images)

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) float32 -> scores (N,), maps (N, H, W) float32."""
        import torch

        res = self.detector.predict(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return np.asarray(res.scores, dtype=np.float32), np.asarray(res.maps, dtype=np.float32)

    def decide(self, scores: np.ndarray) -> list[Verdict]:
        return decide(self.calibration, scores)


def open_predictor(path: str | Path, device: str | None = None) -> Any:
    """A model folder -> TorchPredictor; an exported ``.onnx`` file -> ``deploy.runtime.OnnxPredictor``."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        from .runtime import OnnxPredictor  # imports no torch

        return OnnxPredictor(p)
    return TorchPredictor(p, device=device)


def card_json(pred: Any) -> str:
    """The model card as JSON text (``GET /v1/model``, ``flawmap predict -v``)."""
    return json.dumps(pred.card, indent=2, sort_keys=True)
