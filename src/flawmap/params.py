"""Hyperparameters given as text, the unknown-parameter check and the value checks: the one place they live.

``parse_params(["coreset_ratio=0.1", "layers=[layer2,layer3]"])`` -> ``{"coreset_ratio": 0.1,
"layers": ("layer2", "layer3")}`` (YAML values; lists become tuples). ``check_param_names`` is the check that
every entry point (get_detector, set_params, bench configs and flags, tune) runs on parameter names.
No argparse here: the CLI passes the strings of its flags.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

from .errors import ConfigError


def parse_value(text: str) -> Any:
    """One VALUE as YAML: '0.1' -> 0.1, 'true' -> True, '[a,b]' -> ('a', 'b'), 'layer2' -> 'layer2'."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read value {text!r} as YAML ({exc.__class__.__name__})") from None
    return tuple(v) if isinstance(v, list) else v


def parse_params(items: Sequence[str] | None, what: str = "--param") -> dict[str, Any]:
    """['KEY=VALUE', ...] -> {KEY: value} (see parse_value); a later KEY wins. ``what`` names the flag in errors."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} expects KEY=VALUE; got {item!r}")
        out[key.strip()] = parse_value(val)
    return out


def check_param_names(owner: str, names: Iterable[str], allowed: Sequence[str], where: str | None = None) -> None:
    """ConfigError naming the unknown parameter(s) of ``owner`` (a method) and listing the allowed ones."""
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}{owner}: unknown parameter(s) {unknown}; allowed: {', '.join(allowed)}")


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, integer: bool = False) -> None:
    if integer and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
        raise ConfigError(f"{name} must be an integer; got {value!r}")
    if not integer and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))):
        raise ConfigError(f"{name} must be a number; got {value!r}")
    if not integer and not math.isfinite(float(value)):
        raise ConfigError(f"{name}={value!r} is not allowed; it must be a finite number")
    bad = (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high)
    if bad:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        raise ConfigError(f"{name}={value!r} is out of range; allowed: {'(' if low_open else '['}{lo}, {hi}]")


def check_layers(value: Any, default: str = "the paper's layers") -> None:
    """``layers``: None (``default``) or a non-empty tuple/list of layer names (a bare string is refused)."""
    if value is not None and (not isinstance(value, (list, tuple)) or not value
                              or not all(isinstance(v, str) for v in value)):
        raise ConfigError(f"layers must be None ({default}) or a non-empty tuple of layer names; got {value!r}")


__all__ = ["check_choice", "check_layers", "check_param_names", "check_range", "parse_params", "parse_value"]
