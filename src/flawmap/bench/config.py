"""Benchmark configuration: YAML <-> dataclasses, validated (unknown keys/values list the allowed ones),
expanded into one RunSpec per (category, method, variant, grid point, seed, corruption).

A plain config describes one sweep::

    data: ../shared/data/mvtec
    categories: [bottle]
    backbones: [efficientnet_lite0, resnet18]      # swept for every method with a `backbone` parameter
    methods:
      patchcore:
        params: {coreset_ratio: 0.1}               # fixed
        grid: {patch_size: [1, 3, 5]}              # cartesian product
      padim:
        variants:                                  # alternatives that must change together
          - {backbone: resnet18, layers: [layer1, layer2, layer3]}
          - {backbone: efficientnet_lite0, layers: [blocks.1, blocks.2, blocks.3]}
    corruptions:                                   # test images only; the clean run is kept (clean: true)
      - {name: gaussian_noise, severities: [1, 3, 5], p: 0.3}
    seeds: [0, 1]

A study config has the same keys at the top level (shared by all) plus ``experiments: {name:
{...}}``; each experiment is a sweep and its runs are tagged with its name in the results store.
``method_params: {method: {param: value}}`` fixes values for a method in every experiment (an
experiment's own params and grid win).
In a study, methods that are not registered are skipped with a warning (so a preset can name
methods that are still being written); in a plain config they are an error.
"""

from __future__ import annotations

import importlib.resources
import itertools
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..data import list_categories
from ..data.transform import ASPECTS
from ..errors import ConfigError
from ..params import check_param_names
from ..presets import get_preset, preset_params
from ..registry import detector_class, list_detectors
from .runner import RunSpec

log = logging.getLogger(__name__)

#: keys about where and how to run (top level only); the other keys of a BenchConfig define runs
SETTING_KEYS = ("data", "out", "executor", "workers", "address", "feature_cache", "gallery", "report", "name")
#: the keys that are keyword arguments of flawmap.data.preprocessing
PREPROCESSING_KEYS = ("resize", "crop", "aspect")
EXECUTORS = ("local", "ray")


@dataclass
class MethodConfig:
    params: dict[str, Any] = field(default_factory=dict)  # fixed hyperparameters
    grid: dict[str, list[Any]] = field(default_factory=dict)  # swept hyperparameters (cartesian product)
    variants: list[dict[str, Any]] = field(default_factory=list)  # alternatives (each x the grid)


@dataclass
class CorruptionConfig:
    name: str
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    p: float = 1.0  # probability per test image (the study used 0.3)
    seed: int = 0


@dataclass
class BenchConfig:
    data: str | None = None  # MVTec-layout root; None = the embedded synthetic dataset
    categories: list[str] | None = None  # None = every category under data
    methods: dict[str, MethodConfig] = field(default_factory=lambda: {"patchcore": MethodConfig()})
    preset: str | None = None  # flawmap.presets name: its per-method params and preprocessing under the config's
    backbones: list[str] | None = None  # swept for methods with a `backbone` parameter not set otherwise
    resize: int | None = None
    crop: int | None = None
    aspect: str | None = None  # "stretch" or "pad" (flawmap.data.transform); None: the preset's, else the paper's
    seeds: list[int] | None = None  # None = each method's default seed
    max_train: int | None = None
    out: str = "results"
    corruptions: list[CorruptionConfig] = field(default_factory=list)
    clean: bool = True  # with corruptions: also run on the clean test set (severity 0)
    executor: str = "local"
    workers: int = 1
    address: str | None = None  # Ray cluster address (None: start a local Ray)
    feature_cache: str | bool | None = None  # None: <out>/feature_cache, False: off
    gallery: int = 2  # gallery panels per kind (best, worst, borderline) saved per run
    report: str | bool | None = None  # write a report folder after the sweep (True: <out>/report)
    name: str | None = None  # experiment name used to tag the runs

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing keywords this config sets (resize, crop, aspect; unset ones left out): they win over
        the preset's (``flawmap.data.preprocessing`` fills in the paper's)."""
        return {k: getattr(self, k) for k in PREPROCESSING_KEYS if getattr(self, k) is not None}

    def expand(self, data_root: str) -> list[RunSpec]:
        cats = self.categories or list_categories(data_root)
        preset = get_preset(self.preset)
        specs = []
        for cat in cats:
            for name, mc in self.methods.items():
                grid = dict(mc.grid)
                fixed_backbone = "backbone" in mc.params or "backbone" in grid or any("backbone" in v for v in mc.variants)
                if self.backbones and not fixed_backbone and "backbone" in detector_class(name).param_names():
                    grid["backbone"] = list(self.backbones)
                keys = list(grid)
                for variant in mc.variants or [{}]:
                    for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
                        for seed in self.seeds or [None]:
                            params = preset_params(preset, name, {**mc.params, **variant, **dict(zip(keys, values))})
                            if seed is not None:
                                params["seed"] = seed
                            pre = {**preset.preprocessing_for(name), **self.preprocessing()}  # the config's win
                            base = RunSpec(name, cat, data_root, _tuples(params), pre.get("resize"), pre.get("crop"),
                                           self.max_train, aspect=pre.get("aspect"))
                            if self.clean or not self.corruptions:
                                specs.append(base)
                            for c in self.corruptions:
                                for sev in c.severities:
                                    specs.append(replace(base, corruption=c.name, severity=int(sev), p=float(c.p),
                                                         corruption_seed=int(c.seed)))
        return specs


@dataclass
class StudyConfig:
    """Several named sweeps (experiments) sharing data, output folder, executor and report."""

    base: BenchConfig
    experiments: dict[str, BenchConfig]
    name: str | None = None
    description: str | None = None
    skipped: list[str] = field(default_factory=list)  # "experiment: method" skipped (not registered)
    is_study: bool = False  # parsed from a config with `experiments:`

    def select(self, names: Sequence[str]) -> None:
        """Keep only the experiments called ``names`` (``--experiments``); unknown names raise ConfigError
        listing the study's experiments."""
        if not self.is_study:
            raise ConfigError("--experiments needs a study (--study NAME or a config with `experiments:`)")
        unknown = [n for n in names if n not in self.experiments]
        if unknown or not names:
            raise ConfigError(f"--experiments: unknown experiment(s) {', '.join(unknown) or '(none given)'}; "
                              f"allowed: {', '.join(self.experiments)}")
        self.experiments = {n: c for n, c in self.experiments.items() if n in names}

    def expand(self, data_root: str) -> tuple[list[RunSpec], dict[str, list[str]]]:
        """Unique specs (a run shared by experiments is computed once) and run_key -> experiments."""
        specs: dict[str, RunSpec] = {}
        tags: dict[str, list[str]] = {}
        for ename, cfg in self.experiments.items():
            for s in cfg.expand(data_root):
                k = s.key()
                specs.setdefault(k, s)
                if ename and ename not in tags.setdefault(k, []):
                    tags[k].append(ename)
        return list(specs.values()), tags


# The keys of a config file are the fields of the dataclasses above: written once, there.
TOP_KEYS = tuple(f.name for f in fields(BenchConfig))
#: keys that define runs (allowed at the top level and in each experiment of a study)
RUN_KEYS = tuple(k for k in TOP_KEYS if k not in SETTING_KEYS)
STUDY_KEYS = (*TOP_KEYS, "study", "description", "experiments", "method_params")
EXPERIMENT_KEYS = (*RUN_KEYS, "description")
METHOD_KEYS = tuple(f.name for f in fields(MethodConfig))
CORRUPTION_KEYS = tuple(f.name for f in fields(CorruptionConfig))


def _tuples(params: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def _check_keys(where: str, got: dict[str, Any], allowed: tuple[str, ...] | list[str]) -> None:
    unknown = sorted(set(got) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def _int(where: str, v: Any, low: int = 0, none_ok: bool = True) -> int | None:
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{where}: must be an integer >= {low}; got {v!r}")
    return v


def _str_list(where: str, v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = [x for x in v.split(",") if x]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v) or not v:
        raise ConfigError(f"{where}: must be a non-empty list of names; got {v!r}")
    return v


def parse_corruptions(raw: Any, where: str) -> list[CorruptionConfig]:
    from ..data.corruptions import check_corruption, list_corruptions

    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: must be a list like [{{name: gaussian_noise, severities: [1, 3, 5], p: 0.3}}]; "
                          f"corruptions: {', '.join(list_corruptions())}")
    out = []
    for i, item in enumerate(raw):
        w = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{w}: expected a mapping with keys {', '.join(CORRUPTION_KEYS)} (name required)")
        _check_keys(w, item, CORRUPTION_KEYS)
        try:
            check_corruption(item["name"])
        except ConfigError as exc:
            raise ConfigError(f"{w}: {exc}") from None
        sev = item.get("severities", [1, 2, 3, 4, 5])
        sev = [sev] if isinstance(sev, int) and not isinstance(sev, bool) else sev
        if not isinstance(sev, list) or not sev or any(isinstance(s, bool) or s not in (1, 2, 3, 4, 5) for s in sev):
            raise ConfigError(f"{w}.severities: {sev!r} is not allowed; allowed values: 1, 2, 3, 4, 5")
        p = item.get("p", 1.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ConfigError(f"{w}.p: {p!r} is out of range; allowed: (0, 1]")
        out.append(CorruptionConfig(item["name"], [int(s) for s in sev], float(p), _int(f"{w}.seed", item.get("seed", 0)) or 0))
    return out


def _parse_methods(methods: Any, where: str, skip_missing: bool, skipped: list[str]) -> dict[str, MethodConfig]:
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m]
    if isinstance(methods, list):
        methods = {m: {} for m in methods}
    if not isinstance(methods, dict) or not methods:
        raise ConfigError(f"{where}: 'methods' must be a list of names or a mapping name -> {{params, grid, variants}}")
    out = {}
    for name, mc in methods.items():
        if skip_missing and name not in list_detectors():
            msg = (f"{where}: method {name!r} is not registered (available: {', '.join(list_detectors())}); "
                   "its runs are skipped")
            log.warning(msg)
            skipped.append(msg)
            continue
        check_method(name)
        mc = mc or {}
        if not isinstance(mc, dict):
            raise ConfigError(f"{where}: methods.{name} must be a mapping with keys {', '.join(METHOD_KEYS)}")
        _check_keys(f"{where}: methods.{name}", mc, METHOD_KEYS)
        allowed = detector_class(name).param_names()
        for part in ("params", "grid"):
            if not isinstance(mc.get(part) or {}, dict):
                raise ConfigError(f"{where}: methods.{name}.{part} must be a mapping parameter -> value(s)")
            check_param_names(name, mc.get(part) or {}, allowed, where=f"{where}: methods.{name}.{part}")
        variants = mc.get("variants") or []
        if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
            raise ConfigError(f"{where}: methods.{name}.variants must be a list of mappings parameter -> value")
        for i, v in enumerate(variants):
            check_param_names(name, v, allowed, where=f"{where}: methods.{name}.variants[{i}]")
        grid = {k: (v if isinstance(v, list) else [v]) for k, v in (mc.get("grid") or {}).items()}
        for k, v in grid.items():
            if not v:
                raise ConfigError(f"{where}: methods.{name}.grid.{k} is an empty list")
        out[name] = MethodConfig(params=dict(mc.get("params") or {}), grid=grid, variants=[dict(v) for v in variants])
    return out


def parse_config(raw: dict[str, Any], where: str = "config", *, skip_missing: bool = False,
                 skipped: list[str] | None = None, allowed: tuple[str, ...] = TOP_KEYS,
                 base: BenchConfig | None = None) -> BenchConfig:
    """Validate a plain config mapping (or an experiment merged over ``base``) into a BenchConfig."""
    from ..components.backbones import list_backbones

    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    _check_keys(where, raw, allowed)
    skipped = skipped if skipped is not None else []
    cfg = replace(base) if base is not None else BenchConfig()
    if base is not None:
        cfg.methods = dict(base.methods)
        cfg.corruptions = list(base.corruptions)
    for k, v in raw.items():
        if k in ("methods", "corruptions", "description"):
            continue
        setattr(cfg, k, v)
    if "methods" in raw:
        cfg.methods = _parse_methods(raw["methods"], where, skip_missing, skipped)
    if "corruptions" in raw:
        cfg.corruptions = parse_corruptions(raw["corruptions"], f"{where}: corruptions")
    cfg.categories = _str_list(f"{where}: categories", cfg.categories)
    cfg.backbones = _str_list(f"{where}: backbones", cfg.backbones)
    for b in cfg.backbones or []:
        if b not in list_backbones():
            raise ConfigError(f"{where}: backbones: unknown backbone {b!r}; allowed: {', '.join(list_backbones())}")
    if isinstance(cfg.seeds, int) and not isinstance(cfg.seeds, bool):
        cfg.seeds = [cfg.seeds]
    if cfg.seeds is not None:
        if not isinstance(cfg.seeds, list) or not cfg.seeds:
            raise ConfigError(f"{where}: seeds must be a non-empty list of integers >= 0; got {cfg.seeds!r}")
        for s in cfg.seeds:
            _int(f"{where}: seeds", s, 0, none_ok=False)
    if cfg.preset is not None:
        try:
            get_preset(cfg.preset)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    cfg.resize = _int(f"{where}: resize", cfg.resize, 1)
    cfg.crop = _int(f"{where}: crop", cfg.crop, 0)  # 0 = no crop (flawmap.data.preprocessing)
    if cfg.aspect is not None and cfg.aspect not in ASPECTS:
        raise ConfigError(f"{where}: aspect={cfg.aspect!r} is not allowed; allowed values: {', '.join(ASPECTS)}")
    cfg.max_train = _int(f"{where}: max_train", cfg.max_train, 1)
    if not isinstance(cfg.clean, bool):
        raise ConfigError(f"{where}: clean must be true or false; got {cfg.clean!r}")
    if cfg.executor not in EXECUTORS:
        raise ConfigError(f"{where}: executor={cfg.executor!r} is not allowed; allowed values: {', '.join(EXECUTORS)}")
    _int(f"{where}: workers", cfg.workers, 1, none_ok=False)
    _int(f"{where}: gallery", cfg.gallery, 0, none_ok=False)
    for k in ("data", "out", "address", "name"):
        v = getattr(cfg, k)
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"{where}: {k} must be a string; got {v!r}")
    for k in ("feature_cache", "report"):
        v = getattr(cfg, k)
        if v is not None and not isinstance(v, (str, bool)):
            raise ConfigError(f"{where}: {k} must be a folder path, true or false; got {v!r}")
    if cfg.out is None:
        cfg.out = "results"
    return cfg


def parse_study(raw: dict[str, Any], where: str = "study") -> StudyConfig:
    """A config with ``experiments:`` -> StudyConfig; a plain config -> a study of one unnamed sweep."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    if "experiments" not in raw:
        cfg = parse_config(raw, where)
        return StudyConfig(base=cfg, experiments={cfg.name or "": cfg})
    _check_keys(where, raw, STUDY_KEYS)
    exps = raw["experiments"]
    if not isinstance(exps, dict) or not exps:
        raise ConfigError(f"{where}: experiments must be a mapping name -> {{{', '.join(EXPERIMENT_KEYS)}}}")
    skipped: list[str] = []
    shared = {k: v for k, v in raw.items() if k not in ("experiments", "study", "description", "method_params")}
    method_params = raw.get("method_params") or {}
    if not isinstance(method_params, dict):
        raise ConfigError(f"{where}: method_params must be a mapping method -> {{param: value}}")
    for m, ps in method_params.items():
        if m not in list_detectors():
            continue  # reported where an experiment uses it
        if not isinstance(ps, dict):
            raise ConfigError(f"{where}: method_params.{m} must be a mapping param -> value")
        check_param_names(m, ps, detector_class(m).param_names(), where=f"{where}: method_params.{m}")
    base = parse_config(shared, where, skip_missing=True, skipped=skipped) if "methods" in shared else \
        parse_config(shared, where)
    study = StudyConfig(base=base, experiments={}, name=raw.get("study"), description=raw.get("description"),
                        skipped=skipped, is_study=True)
    for ename, eraw in exps.items():
        w = f"{where}: experiments.{ename}"
        if not isinstance(eraw, dict):
            raise ConfigError(f"{w}: expected a mapping with keys {', '.join(EXPERIMENT_KEYS)}")
        before = len(skipped)
        cfg = parse_config(eraw, w, skip_missing=True, skipped=skipped, allowed=EXPERIMENT_KEYS, base=base)
        cfg.name = str(ename)
        for m, mc in cfg.methods.items():  # shared fixed values; the experiment's own params/grid win
            extra = {k: v for k, v in (method_params.get(m) or {}).items() if k not in mc.params and k not in mc.grid}
            cfg.methods[m] = MethodConfig(params={**extra, **mc.params}, grid=dict(mc.grid), variants=list(mc.variants))
        if not cfg.methods:
            msg = f"{w}: no registered method left; experiment skipped"
            if len(skipped) > before:
                log.warning(msg)
                skipped.append(msg)
                continue
            raise ConfigError(f"{w}: no methods")
        study.experiments[str(ename)] = cfg
    if not study.experiments:
        raise ConfigError(f"{where}: no experiment has a registered method ({'; '.join(skipped)})")
    return study


def check_method(name: str) -> None:
    if name not in list_detectors():
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(list_detectors())}")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    return raw or {}


def load_study(path: str | Path) -> StudyConfig:
    """A bench config or a study config file."""
    path = Path(path)
    return parse_study(_read_yaml(path), where=str(path))


def _preset_dirs() -> list[Path]:
    """./configs (a user's own presets), then the presets shipped as package data (flawmap/configs)."""
    shipped = Path(str(importlib.resources.files("flawmap") / "configs"))  # installed as plain files (setuptools)
    return list(dict.fromkeys(d.resolve() for d in (Path.cwd() / "configs", shipped)))


def preset_path(name: str) -> Path:
    """``--study NAME``: a YAML path, or study_NAME.yaml in ./configs, then in the presets shipped with flawmap."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    tried = []
    dirs = _preset_dirs()
    for d in dirs:
        cand = d / f"study_{name}.yaml"
        tried.append(str(cand))
        if cand.is_file():
            return cand
    found = sorted({f.stem[len("study_"):] for d in dirs if d.is_dir() for f in d.glob("study_*.yaml")})
    raise ConfigError(f"unknown study preset {name!r}; available: {', '.join(found) or 'none'} (looked for {', '.join(tried)})")


def validate_specs(specs: list[RunSpec]) -> None:
    """Check every run's hyperparameter values before the sweep starts (errors list allowed values)."""
    seen = set()
    for s in specs:
        ident = (s.method, repr(sorted(s.params.items())))
        if ident in seen:
            continue
        seen.add(ident)
        det = detector_class(s.method)(**s.params)
        try:
            det.validate_params()
        except ConfigError as exc:
            raise ConfigError(f"{s.method} {dict(s.params)}: {exc}") from None
