"""flawmap: unsupervised visual anomaly detection and segmentation."""

from __future__ import annotations

__version__ = "0.1.0"

from .types import AnomalyResult  # noqa: E402
from .registry import get_detector, list_detectors, register_detector  # noqa: E402
from .base import BaseDetector, load_detector  # noqa: E402

__all__ = [
    "AnomalyResult",
    "BaseDetector",
    "get_detector",
    "list_detectors",
    "load_detector",
    "register_detector",
    "__version__",
]
