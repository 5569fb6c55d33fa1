"""The JSON record of one scored image (``POST /v1/predict``), with the optional overlay PNG or raw map."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from ..deploy.predictor import Verdict
from ..viz.heatmap import calibrated_panel, png_bytes

HEATMAP_CHOICES = ("png",)
MAP_CHOICES = ("npy",)


def overlay_png(pred: Any, x: np.ndarray, amap: np.ndarray) -> bytes:
    """The panel ``flawmap predict`` writes (``viz.heatmap.calibrated_panel``) as PNG bytes."""
    return png_bytes(calibrated_panel(x, amap, pred.calibration))


def npy_bytes(amap: np.ndarray) -> bytes:
    """The raw map (H, W) float32 as a ``.npy`` file."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(amap, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def image_record(name: str, size_hw: tuple[int, int], verdict: Verdict, ms: float, batch_size: int,
                 heatmap: bytes | None = None, amap: bytes | None = None) -> dict[str, Any]:
    """One image's result: raw ``score``, ``normalized_score`` in [0, 1] (threshold at 0.5), ``anomalous``
    and ``verdict`` ("ok" / "anomalous"; None without a calibration), the ``threshold``, the uploaded image
    size, server milliseconds and the size of the forward pass it shared; base64 PNG / .npy when asked."""
    rec: dict[str, Any] = {
        "name": name, "width": int(size_hw[1]), "height": int(size_hw[0]),
        "score": verdict.score, "normalized_score": verdict.normalized_score, "anomalous": verdict.anomalous,
        "verdict": None if verdict.anomalous is None else ("anomalous" if verdict.anomalous else "ok"),
        "threshold": verdict.threshold, "ms": round(ms, 3), "batch_size": batch_size,
    }
    if heatmap is not None:
        rec["heatmap_png"] = base64.b64encode(heatmap).decode("ascii")
    if amap is not None:
        rec["map_npy"] = base64.b64encode(amap).decode("ascii")
    return rec
