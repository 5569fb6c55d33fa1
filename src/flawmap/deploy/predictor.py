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

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelFileError
from .backend import MODEL_ID_LENGTH, Predictor, Verdict, calibration_of, decide, model_card, model_id, model_version, preprocess


class TorchPredictor:
    """A model folder written by ``flawmap fit`` (config.json + model.safetensors), run with PyTorch."""

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        from ..data import Transform
        from ..model_file import load_detector, read_model_config

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
        self.card = model_card(self.method, cfg["params"], self.transform, self.calibration,
                               cfg.get("flawmap_version"), "flawmap-folder", model_id=self.model_id,
                               model_version=self.model_version)

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return preprocess(self.transform, images)

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) float32 -> scores (N,), maps (N, H, W) float32."""
        import torch

        res = self.detector.predict(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return np.asarray(res.scores, dtype=np.float32), np.asarray(res.maps, dtype=np.float32)

    def decide(self, scores: np.ndarray) -> list[Verdict]:
        return decide(self.calibration, scores)


def open_predictor(path: str | Path, device: str | None = None) -> Predictor:
    """A model folder -> TorchPredictor; an exported ``.onnx`` file -> ``deploy.runtime.OnnxPredictor``."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        from .runtime import OnnxPredictor  # imports no torch

        return OnnxPredictor(p)
    return TorchPredictor(p, device=device)




__all__ = ["MODEL_ID_LENGTH", "Predictor", "TorchPredictor", "Verdict", "calibration_of", "decide", "model_id",
           "model_version", "open_predictor", "preprocess"]
