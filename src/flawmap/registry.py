"""Detector registry: ``@register_detector("name")``, ``get_detector(name, **params)``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from .base import BaseDetector

_REGISTRY: dict[str, type[BaseDetector]] = {}
# Built-in detectors live in flawmap.detectors.<name>; imported lazily on first lookup. A built-in module that
# is missing or fails to import is an error (the ImportError propagates): the registry never shrinks silently.
_BUILTIN = ("patchcore", "padim", "spade", "fastflow", "riad")

D = TypeVar("D", bound="type[BaseDetector]")


def register_detector(name: str) -> Callable[[D], D]:
    def deco(cls: D) -> D:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"detector name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    for mod in _BUILTIN:
        importlib.import_module(f"flawmap.detectors.{mod}")


def list_detectors() -> list[str]:
    """Names of all registered detectors, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def detector_class(name: str) -> type[BaseDetector]:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown detector {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def get_detector(name: str, *, preset: str | None = None, **params: Any) -> BaseDetector:
    """Create a detector by name; unknown parameters raise and list the allowed ones. ``preset`` (e.g. "fast",
    see ``flawmap.presets``) sets its hyperparameters first; explicit ``params`` win. A preset's preprocessing
    is not a detector parameter: ``flawmap.presets.preset_transform(preset, name)`` gives it."""
    from .params import check_param_names
    from .presets import preset_params

    cls = detector_class(name)
    check_param_names(name, params, cls.param_names())
    return cls(**preset_params(preset, name, params))
