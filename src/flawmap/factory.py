"""The detector factory: ``get_detector(name, preset=..., **params)``, the one place a preset's
hyperparameters meet explicit ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .params import check_param_names
from .presets import preset_params
from .registry import detector_class

if TYPE_CHECKING:
    from .base import BaseDetector


def get_detector(name: str, *, preset: str | None = None, **params: Any) -> BaseDetector:
    """Create a detector by name; unknown parameters raise and list the allowed ones. ``preset`` (e.g. "fast",
    see ``flawmap.presets``) sets its hyperparameters first; explicit ``params`` win. A preset's preprocessing
    is not a detector parameter: ``flawmap.presets.preset_transform(preset, name)`` gives it."""
    cls = detector_class(name)
    check_param_names(name, params, cls.param_names())
    return cls(**preset_params(preset, name, params))


__all__ = ["get_detector"]
