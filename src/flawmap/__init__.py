"""flawmap: unsupervised visual anomaly detection and segmentation.

The public names are imported on first use (PEP 562), so that ``import flawmap.deploy.runtime`` (the
ONNX runtime) does not import torch; ``from flawmap import get_detector`` works as before.
"""

from __future__ import annotations

from ._lazy import lazy_names

__version__ = "0.1.0"

_LAZY = {
    "AnomalyResult": "types",
    "get_detector": "factory", "list_detectors": "registry", "register_detector": "registry",
    "BaseDetector": "base", "load_detector": "model_file",
}


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)

__all__ = [
    "AnomalyResult",
    "BaseDetector",
    "get_detector",
    "list_detectors",
    "load_detector",
    "register_detector",
    "__version__",
]
