"""flawmap: unsupervised visual anomaly detection and segmentation.

The public names are imported on first use (PEP 562), so that ``import flawmap.deploy.runtime`` (the
ONNX runtime) does not import torch; ``from flawmap import get_detector`` works as before.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AnomalyResult": "types",
    "get_detector": "registry", "list_detectors": "registry", "register_detector": "registry",
    "BaseDetector": "base", "load_detector": "base",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AnomalyResult",
    "BaseDetector",
    "get_detector",
    "list_detectors",
    "load_detector",
    "register_detector",
    "__version__",
]
