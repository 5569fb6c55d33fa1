"""Flags over YAML for `flawmap bench`: the study (or plain sweep) a command line asks for.

    study = load_bench_study(BenchFlags(config="sweep.yaml", methods="padim", param=["padim.n_features=50"]))

The file (or ``--study`` preset, or the default sweep) is read first; each flag that is given then replaces
its setting in every experiment (``--methods`` filters a study's methods; ``--param`` / ``--grid`` reach
the methods that have the parameter). The CLI only parses the flags into :class:`BenchFlags`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..components.backbones import list_backbones
from ..errors import ConfigError
from ..params import check_param_names, parse_params
from ..presets import preset_transform
from ..registry import detector_class
from .config import BenchConfig, MethodConfig, StudyConfig, check_method, load_study, parse_corruptions, preset_path
from .defaults import default_bench_config

log = logging.getLogger("flawmap")


@dataclass
class BenchFlags:
    """The flags of `flawmap bench` (None / False / empty: not given, the file's setting stays)."""

    config: str | None = None
    study: str | None = None
    preset: str | None = None
    experiments: str | None = None  # comma-separated names
    data: str | None = None
    out: str | None = None
    executor: str | None = None
    workers: int | None = None
    address: str | None = None
    gallery: int | None = None
    feature_cache: str | None = None
    no_feature_cache: bool = False
    report: str | None = None  # "" = on, in the default folder
    no_report: bool = False
    corruption: list[str] | None = None  # NAME[:SEVERITIES[:P]] each
    seeds: str | None = None
    backbones: str | None = None
    resize: int | None = None
    crop: int | None = None
    aspect: str | None = None
    max_train: int | None = None
    categories: str | None = None
    methods: str | None = None
    param: list[str] | None = None  # [METHOD.]KEY=VALUE each
    grid: list[str] | None = None  # [METHOD.]KEY=[V1,V2,...] each
    device: str | None = None


def parse_corruption(text: str) -> dict[str, Any]:
    """--corruption NAME[:SEVERITIES[:P]], e.g. gaussian_noise:1,3,5:0.3 -> config mapping."""
    parts = text.split(":")
    if not parts[0] or len(parts) > 3:
        raise ConfigError(f"--corruption expects NAME[:SEVERITIES[:P]] (e.g. gaussian_noise:1,3,5:0.3); got {text!r}")
    item: dict[str, Any] = {"name": parts[0]}
    try:
        if len(parts) > 1 and parts[1]:
            item["severities"] = [int(v) for v in parts[1].split(",") if v]
        if len(parts) > 2 and parts[2]:
            item["p"] = float(parts[2])
    except ValueError:
        raise ConfigError(f"--corruption: severities must be integers 1..5 and p a number; got {text!r}") from None
    return item


def _apply_method_overrides(cfg: BenchConfig, args: BenchFlags, study_mode: bool) -> None:
    """--methods / --param / --grid / --device on one sweep config (in place)."""
    if args.methods:
        names = [m for m in args.methods.split(",") if m]
        if study_mode:  # a filter on the study's methods
            cfg.methods = {m: mc for m, mc in cfg.methods.items() if m in names}
        else:
            for m in names:
                check_method(m)
            cfg.methods = {m: cfg.methods.get(m, MethodConfig()) for m in names}
    fixed = parse_params(args.param)
    grid = {k: list(v) if isinstance(v, tuple) else [v] for k, v in parse_params(args.grid, "--grid").items()}
    for name, mc in cfg.methods.items():
        allowed = detector_class(name).param_names()
        for key, value in {**fixed, **grid}.items():
            method, _, pname = key.rpartition(".")
            if method and method != name:
                continue
            if pname not in allowed:
                if method:  # METHOD.KEY: KEY must be one of METHOD's parameters
                    check_param_names(name, [pname], allowed, where=key)
                continue  # an unscoped key only applies to methods that have it
            (mc.grid if key in grid else mc.params)[pname] = value
        if args.device:
            mc.params["device"] = args.device


def load_bench_study(args: BenchFlags) -> StudyConfig:
    """The study (or plain sweep) of a `flawmap bench` command line: file, preset, then flags."""
    if args.config and args.study:
        raise ConfigError("give either a CONFIG file or --study, not both")
    path = preset_path(args.study) if args.study else args.config
    if path:
        study = load_study(path)
    else:  # every method, cpu-quick settings (or --preset), on the embedded data unless --data (flawmap.bench.defaults)
        cfg = default_bench_config(args.preset)
        study = StudyConfig(base=cfg, experiments={cfg.name or "": cfg})
    if args.experiments is not None:
        study.select([e for e in args.experiments.split(",") if e])
    study_mode = study.is_study
    base = study.base
    for attr in ("data", "out", "executor", "workers", "address", "gallery"):
        v = getattr(args, attr)
        if v is not None:
            setattr(base, attr, v)
    if args.no_feature_cache:
        base.feature_cache = False
    elif args.feature_cache:
        base.feature_cache = args.feature_cache
    if args.no_report:
        base.report = False
    elif args.report is not None:
        base.report = args.report or True
    elif study_mode and base.report is None:
        base.report = True  # a study writes one report by default
    extra_corruptions = parse_corruptions([parse_corruption(c) for c in args.corruption or []], "--corruption")
    seeds = [int(v) for v in args.seeds.split(",") if v] if args.seeds else None
    backbones = [b for b in args.backbones.split(",") if b] if args.backbones else None
    for b in backbones or []:
        if b not in list_backbones():
            raise ConfigError(f"--backbones: unknown backbone {b!r}; allowed: {', '.join(list_backbones())}")
    for name, cfg in list(study.experiments.items()):
        if cfg is not base:
            for attr in ("data", "out", "executor", "workers", "address", "gallery", "feature_cache", "report"):
                setattr(cfg, attr, getattr(base, attr))
        for attr in ("preset", "resize", "crop", "aspect", "max_train"):
            v = getattr(args, attr)
            if v is not None:
                setattr(cfg, attr, v)
        if args.categories:
            cfg.categories = [c for c in args.categories.split(",") if c]
        if seeds is not None:
            cfg.seeds = seeds
        if backbones is not None:
            cfg.backbones = backbones
        if extra_corruptions:
            cfg.corruptions = [*cfg.corruptions, *extra_corruptions]
        _apply_method_overrides(cfg, args, study_mode)
        for method in cfg.methods:  # a bad resize/crop/aspect stops here, before any run
            preset_transform(cfg.preset, method, cfg.resize, cfg.crop, cfg.aspect)
        if not cfg.methods:
            del study.experiments[name]
    if not study.experiments:
        raise ConfigError(f"--methods {args.methods}: none of these methods is in the study")
    _check_override_keys(study, args)
    return study


def _check_override_keys(study: StudyConfig, args: BenchFlags) -> None:
    """Every --param / --grid key must reach a selected method: an unscoped key that no selected method
    has (a typo such as coreset_raito) is an error listing the parameters of the selected methods."""
    selected = sorted({m for cfg in study.experiments.values() for m in cfg.methods})
    for flag, items in (("--param", args.param), ("--grid", args.grid)):
        for key in parse_params(items, flag):
            method, _, pname = key.rpartition(".")
            if method:
                check_method(method)
                if method not in selected:
                    msg = f"{flag} {key}: method {method!r} is not selected (selected: {', '.join(selected)})"
                    if not study.is_study:
                        raise ConfigError(msg)
                    log.warning("%s; ignored", msg)
            elif not any(pname in detector_class(m).param_names() for m in selected):
                allowed = "; ".join(f"{m}: {', '.join(detector_class(m).param_names())}" for m in selected)
                raise ConfigError(f"{flag} {key}: no selected method has a parameter {pname!r}; parameters of the "
                                  f"selected methods: {allowed}")
