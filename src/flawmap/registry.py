"""Detector registry: ``@register_detector("name")`` and the lookups (``detector_class``, ``list_detectors``).

A leaf: it imports no detector module statically (built-ins are imported by name on first lookup) and
applies no preset; ``flawmap.factory.get_detector`` builds detectors."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, TypeVar

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


def exportable_detectors() -> list[str]:
    """Names of the detectors ``flawmap export`` can write to ONNX (class attribute ``exportable``), sorted."""
    return [name for name in list_detectors() if _REGISTRY[name].exportable]


def detector_class(name: str) -> type[BaseDetector]:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown detector {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None

