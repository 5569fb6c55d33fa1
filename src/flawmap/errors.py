"""Exceptions raised by flawmap. Every message names the offending file or value."""

from __future__ import annotations


class FlawmapError(Exception):
    """Base class of all flawmap errors."""


class DataError(FlawmapError, ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


class ConfigError(FlawmapError, ValueError):
    """A parameter or configuration value is not allowed."""


class NotFittedError(FlawmapError, RuntimeError):
    """A detector was used before ``fit``."""


class WeightsNotFoundError(FlawmapError, FileNotFoundError):
    """Pretrained weights could not be resolved from any source."""


class ModelFileError(FlawmapError, ValueError):
    """A saved model file is invalid or from an incompatible version."""


class OutputError(FlawmapError, OSError):
    """An output path cannot be written, or holds something flawmap refuses to overwrite."""
