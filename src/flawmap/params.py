"""Hyperparameters given as text, and the unknown-parameter check: the one place both live.

``parse_params(["coreset_ratio=0.1", "layers=[layer2,layer3]"])`` -> ``{"coreset_ratio": 0.1,
"layers": ("layer2", "layer3")}`` (YAML values; lists become tuples). ``check_param_names`` is the check that
every entry point (get_detector, set_params, bench configs and flags, tune) runs on parameter names.
No argparse here: the CLI passes the strings of its flags.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

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


__all__ = ["check_param_names", "parse_params", "parse_value"]
