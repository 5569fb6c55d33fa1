"""Benchmark configuration: YAML <-> dataclass, validated (unknown keys/values list the allowed ones),
expanded into one RunSpec per (category, method, grid point)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import list_categories
from ..errors import ConfigError
from ..registry import detector_class, list_detectors
from .runner import RunSpec

TOP_KEYS = ("data", "categories", "methods", "resize", "crop", "seeds", "max_train", "out")
METHOD_KEYS = ("params", "grid")


@dataclass
class MethodConfig:
    params: dict[str, Any] = field(default_factory=dict)  # fixed hyperparameters
    grid: dict[str, list[Any]] = field(default_factory=dict)  # swept hyperparameters (cartesian product)


@dataclass
class BenchConfig:
    data: str | None = None  # MVTec-layout root; None = the embedded synthetic dataset
    categories: list[str] | None = None  # None = every category under data
    methods: dict[str, MethodConfig] = field(default_factory=lambda: {"patchcore": MethodConfig()})
    resize: int | None = None
    crop: int | None = None
    seeds: list[int] | None = None  # None = each method's default seed
    max_train: int | None = None
    out: str = "results"

    def expand(self, data_root: str) -> list[RunSpec]:
        cats = self.categories or list_categories(data_root)
        specs = []
        for cat in cats:
            for name, mc in self.methods.items():
                keys = list(mc.grid)
                for values in itertools.product(*(mc.grid[k] for k in keys)) if keys else [()]:
                    for seed in self.seeds or [None]:
                        params = {**mc.params, **dict(zip(keys, values))}
                        if seed is not None:
                            params["seed"] = seed
                        specs.append(RunSpec(name, cat, data_root, _tuples(params), self.resize, self.crop, self.max_train))
        return specs


def _tuples(params: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def _check_keys(where: str, got: dict[str, Any], allowed: tuple[str, ...] | list[str]) -> None:
    unknown = sorted(set(got) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def parse_config(raw: dict[str, Any], where: str = "config") -> BenchConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    _check_keys(where, raw, TOP_KEYS)
    cfg = BenchConfig(**{k: v for k, v in raw.items() if k != "methods"})
    if "methods" in raw:
        methods = raw["methods"]
        if isinstance(methods, list):
            methods = {m: {} for m in methods}
        if not isinstance(methods, dict) or not methods:
            raise ConfigError(f"{where}: 'methods' must be a list of names or a mapping name -> {{params, grid}}")
        cfg.methods = {}
        for name, mc in methods.items():
            check_method(name)
            mc = mc or {}
            _check_keys(f"{where}: methods.{name}", mc, METHOD_KEYS)
            allowed = detector_class(name).param_names()
            for part in ("params", "grid"):
                _check_keys(f"{where}: methods.{name}.{part}", mc.get(part) or {}, allowed)
            grid = {k: (v if isinstance(v, list) else [v]) for k, v in (mc.get("grid") or {}).items()}
            cfg.methods[name] = MethodConfig(params=dict(mc.get("params") or {}), grid=grid)
    if isinstance(cfg.categories, str):
        cfg.categories = [c for c in cfg.categories.split(",") if c]
    return cfg


def check_method(name: str) -> None:
    if name not in list_detectors():
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(list_detectors())}")


def load_config(path: str | Path) -> BenchConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    return parse_config(raw or {}, where=str(path))
