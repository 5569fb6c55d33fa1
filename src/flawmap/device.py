"""Device selection: 'auto' picks CUDA when present, else CPU."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}")
    return dev
