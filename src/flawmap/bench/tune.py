"""``flawmap tune``: hyperparameter search with Optuna.

The test split of each category is divided once, stratified by label and seeded, into a
validation part (``val_fraction`` of each label's images) and a held-out part. Every trial fits
on the training images and is scored on the validation part only; the best trial is then refitted
and its final figures are computed on the held-out part only, which the search never saw.

The study lives in an Optuna storage (default ``sqlite:///<out>/optuna.sqlite``); several
processes given the same ``--storage`` URL and ``--study-name`` share one study (each runs
``--trials`` trials). The search space comes from a YAML ``search:`` block, ``--search`` flags,
or the method's built-in space (:data:`DEFAULT_SEARCH`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from ..data import Transform
from ..errors import ConfigError
from ..factory import get_detector
from ..io import atomic_write_text
from ..metrics import METRIC_KEYS, evaluate
from ..params import check_param_names
from ..presets import preset_params, preset_transform
from ..registry import detector_class
from ..viz.text import format_table, format_value
from .runner import SplitCache
from .store import write_csv

log = logging.getLogger(__name__)

#: built-in search spaces: {param: {type: float|int|categorical, low, high, log, choices}}
DEFAULT_SEARCH: dict[str, dict[str, dict[str, Any]]] = {
    "patchcore": {"coreset_ratio": {"type": "float", "low": 0.001, "high": 0.25, "log": True},
                  "patch_size": {"type": "categorical", "choices": [1, 3, 5]}},
    "spade": {"k": {"type": "int", "low": 1, "high": 100, "log": True}},
    "padim": {"n_features": {"type": "int", "low": 20, "high": 160, "log": True},
              "eps": {"type": "float", "low": 1e-3, "high": 1.0, "log": True}},
    "fastflow": {"flow_steps": {"type": "int", "low": 2, "high": 12},
                 "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "riad": {"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
             "batch_size": {"type": "categorical", "choices": [4, 8, 16]}},
}
TUNE_KEYS = ("method", "preset", "data", "categories", "params", "search", "trials", "metric", "val_fraction", "seed", "resize",
             "crop", "aspect", "max_train", "out", "storage", "study_name", "feature_cache")
SPEC_KEYS = ("type", "low", "high", "log", "choices", "step")
TYPES = ("float", "int", "categorical")


@dataclass
class TuneConfig:
    method: str = "patchcore"
    preset: str | None = None  # flawmap.presets: fixed values under params; searched parameters are not fixed by it
    data: str | None = None
    categories: list[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    search: dict[str, dict[str, Any]] = field(default_factory=dict)
    trials: int = 20
    metric: str = "image_auroc"
    val_fraction: float = 0.5
    seed: int = 0
    resize: int | None = None
    crop: int | None = None
    aspect: str | None = None  # "stretch" or "pad" (flawmap.data.transform); None: the preset's, else the paper's
    max_train: int | None = None
    out: str = "results/tune"
    storage: str | None = None
    study_name: str | None = None
    feature_cache: str | bool | None = None

    def transform(self) -> Transform:
        """The preprocessing of every trial (flawmap.data.preprocessing: unset = the paper setting, crop 0 = none)."""
        return preset_transform(self.preset, self.method, self.resize, self.crop, self.aspect)


def parse_search(method: str, raw: Any, where: str = "search") -> dict[str, dict[str, Any]]:
    """Validate a search block: {param: [choices] | {type, low, high, log, choices, step}}."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a mapping parameter -> space (e.g. coreset_ratio: "
                          "{type: float, low: 0.001, high: 0.25, log: true}, patch_size: [1, 3, 5])")
    check_param_names(method, raw, detector_class(method).param_names(), where)
    out = {}
    for name, spec in raw.items():
        w = f"{where}.{name}"
        if isinstance(spec, list):
            spec = {"type": "categorical", "choices": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{w}: expected a list of choices or a mapping with keys {', '.join(SPEC_KEYS)}")
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ConfigError(f"{w}: unknown key(s) {unknown}; allowed: {', '.join(SPEC_KEYS)}")
        kind = spec.get("type", "categorical" if "choices" in spec else None)
        if kind not in TYPES:
            raise ConfigError(f"{w}.type={kind!r} is not allowed; allowed values: {', '.join(TYPES)}")
        if kind == "categorical":
            ch = spec.get("choices")
            if not isinstance(ch, list) or not ch:
                raise ConfigError(f"{w}.choices must be a non-empty list")
            out[name] = {"type": kind, "choices": [tuple(c) if isinstance(c, list) else c for c in ch]}
            continue
        lo, hi = spec.get("low"), spec.get("high")
        num = (int,) if kind == "int" else (int, float)
        if not isinstance(lo, num) or not isinstance(hi, num) or isinstance(lo, bool) or isinstance(hi, bool) or lo >= hi:
            raise ConfigError(f"{w}: needs numbers low < high ({kind}); got low={lo!r}, high={hi!r}")
        log_ = bool(spec.get("log", False))
        if log_ and lo <= 0:
            raise ConfigError(f"{w}: log scale needs low > 0; got {lo!r}")
        out[name] = {"type": kind, "low": lo, "high": hi, "log": log_, **({"step": spec["step"]} if "step" in spec else {})}
    return out


def parse_search_flag(items: list[str]) -> dict[str, Any]:
    """--search KEY=[a,b] | KEY=float:LOW:HIGH[:log] | KEY=int:LOW:HIGH[:log]."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--search expects KEY=SPEC; got {item!r}")
        if val.startswith(("float:", "int:")):
            parts = val.split(":")
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "log"):
                raise ConfigError(f"--search {item!r}: expected KEY=float:LOW:HIGH[:log] or KEY=int:LOW:HIGH[:log]")
            conv = float if parts[0] == "float" else int
            try:
                out[key] = {"type": parts[0], "low": conv(parts[1]), "high": conv(parts[2]), "log": len(parts) == 4}
            except ValueError:
                raise ConfigError(f"--search {item!r}: LOW and HIGH must be {parts[0]} numbers") from None
        else:
            v = yaml.safe_load(val)
            if not isinstance(v, list):
                raise ConfigError(f"--search {item!r}: expected a list of choices [a,b,...] or float:/int: LOW:HIGH")
            out[key] = v
    return out


#: TuneConfig fields that ``load_tune_config(overrides=...)`` may set (None values are ignored)
OVERRIDE_KEYS = ("method", "preset", "data", "categories", "trials", "metric", "val_fraction", "seed", "resize", "crop",
                 "aspect", "max_train", "out", "storage", "study_name", "feature_cache")


def load_tune_config(config: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None,
                     params: Mapping[str, Any] | None = None, search: Mapping[str, Any] | None = None) -> TuneConfig:
    """A validated TuneConfig: the YAML file ``config`` (keys TUNE_KEYS), then ``overrides`` (OVERRIDE_KEYS;
    categories may be a comma-separated string, feature_cache False = off), fixed ``params`` added to the
    file's and ``search`` entries (see parse_search) added to the file's search space."""
    raw: dict[str, Any] = {}
    if config:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        unknown = sorted(set(raw) - set(TUNE_KEYS))
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {', '.join(TUNE_KEYS)}")
    cfg = TuneConfig(**{k: v for k, v in raw.items() if k not in ("search", "params")})
    overrides = dict(overrides or {})
    if unknown := sorted(set(overrides) - set(OVERRIDE_KEYS)):
        raise ConfigError(f"load_tune_config: unknown override(s) {unknown}; allowed: {', '.join(OVERRIDE_KEYS)}")
    for attr, v in overrides.items():
        if v is not None:
            setattr(cfg, attr, v)
    if isinstance(cfg.categories, str):
        cfg.categories = [c for c in cfg.categories.split(",") if c]
    cls = detector_class(cfg.method)  # unknown method: lists the available ones
    fixed = raw.get("params") or {}
    if not isinstance(fixed, dict):
        raise ConfigError("params: expected a mapping parameter -> value")
    fixed = {**fixed, **(params or {})}
    check_param_names(cfg.method, fixed, cls.param_names())
    cfg.params = fixed
    search_raw = raw.get("search")
    if search:
        search_raw = {**(search_raw or {}), **search}
    search = search_raw
    if search is None:
        if cfg.method not in DEFAULT_SEARCH:
            raise ConfigError(f"no built-in search space for {cfg.method!r}; give a `search:` block or --search")
        search = DEFAULT_SEARCH[cfg.method]
    cfg.search = parse_search(cfg.method, search)
    clash = sorted(set(cfg.search) & set(cfg.params))
    if clash:
        raise ConfigError(f"parameter(s) {clash} are both fixed (params/--param) and searched")
    preset = {k: v for k, v in preset_params(cfg.preset, cfg.method).items() if k not in cfg.search}
    cfg.params = {**preset, **cfg.params}  # explicit params win over the preset's
    if cfg.metric not in METRIC_KEYS:
        raise ConfigError(f"metric={cfg.metric!r} is not allowed; allowed values: {', '.join(METRIC_KEYS)}")
    if isinstance(cfg.trials, bool) or not isinstance(cfg.trials, int) or cfg.trials < 0:
        raise ConfigError(f"trials must be an integer >= 0; got {cfg.trials!r}")
    if not isinstance(cfg.val_fraction, (int, float)) or not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1); got {cfg.val_fraction!r}")
    cfg.transform()  # a bad resize/crop/aspect stops here, before any trial
    return cfg


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation indices, held-out indices): per label, a seeded random ``fraction`` (at least one
    image in each part when the label has two or more images)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val, hold = [], []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        val.append(idx[:k])
        hold.append(idx[k:])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(hold))


def _subset(split, idx: np.ndarray):
    from ..data import Split

    t = np.asarray(idx)
    return Split(split.images[t], split.labels[t], None if split.masks is None else split.masks[t],
                 [split.defect_types[i] for i in t], [split.paths[i] for i in t])


def _suggest(trial, name: str, spec: dict[str, Any]) -> Any:
    if spec["type"] == "categorical":
        choices = spec["choices"]
        # Optuna choices must be None/bool/int/float/str: tuples (e.g. layers) are chosen by index
        if all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            return trial.suggest_categorical(name, choices)
        labels = ["+".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in choices]
        return choices[labels.index(trial.suggest_categorical(name, labels))]
    if spec["type"] == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=spec["log"], step=int(spec.get("step", 1)))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=spec["log"],
                               **({"step": float(spec["step"])} if "step" in spec else {}))


def _params_from_trial(cfg: TuneConfig, trial_params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in trial_params.items():
        spec = cfg.search.get(k)
        if spec and spec["type"] == "categorical" and v not in spec["choices"]:
            labels = ["+".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in spec["choices"]]
            v = spec["choices"][labels.index(v)]
        out[k] = v
    return out


def run_tune(cfg: TuneConfig, echo=print) -> dict[str, Any]:
    try:
        import optuna
    except ImportError:
        raise ConfigError('flawmap tune needs Optuna: pip install "flawmap[tune]" (or optuna)') from None
    from ..components.features import FeatureCache
    from ..data import list_categories, resolve_data_root

    data_root = str(resolve_data_root(cfg.data))
    cats = cfg.categories or list_categories(data_root)[:1]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = cfg.storage or f"sqlite:///{(out / 'optuna.sqlite').resolve()}"
    name = cfg.study_name or f"flawmap-{cfg.method}-{'-'.join(cats)}"
    cache = None if cfg.feature_cache is False else FeatureCache(Path(cfg.feature_cache or out / "feature_cache"))
    splits = SplitCache()
    parts: dict[str, tuple[Any, Any, Any]] = {}
    for cat in cats:
        tf = cfg.transform()
        train = splits.get(data_root, cat, "train", tf)
        test = splits.get(data_root, cat, "test", tf)
        v_idx, h_idx = stratified_split(test.labels, cfg.val_fraction, cfg.seed)
        train_images = train.images if cfg.max_train is None else train.images[: cfg.max_train]
        parts[cat] = (train_images, _subset(test, v_idx), _subset(test, h_idx))
    n_val = sum(len(p[1]) for p in parts.values())
    n_hold = sum(len(p[2]) for p in parts.values())
    echo(f"tune {cfg.method} on {', '.join(cats)}: objective = mean {cfg.metric} on a VALIDATION split of {n_val} test "
         f"images (stratified by label, seed {cfg.seed}, fraction {cfg.val_fraction}); final figures on the remaining "
         f"{n_hold} held-out test images only")
    echo(f"study {name!r} in {storage}; search space: {json.dumps(cfg.search, default=str)}")

    def evaluate_params(params: dict[str, Any], which: int) -> dict[str, dict[str, Any]]:
        res = {}
        for cat, p in parts.items():
            det = get_detector(cfg.method, **{**cfg.params, **params}).use_feature_cache(cache)
            t0 = time.perf_counter()
            det.fit(p[0])
            fit_s = time.perf_counter() - t0
            split = p[which]
            r = det.predict(split.images)
            res[cat] = {**evaluate(split.labels, r.scores, split.masks, r.maps), "fit_seconds": round(fit_s, 3)}
        return res

    def objective(trial) -> float:
        params = {k: _suggest(trial, k, s) for k, s in cfg.search.items()}
        res = evaluate_params(params, 1)
        vals = [m[cfg.metric] for m in res.values()]
        if any(v is None for v in vals):
            raise ConfigError(f"{cfg.metric} is not available on the validation split ({res}); choose another --metric")
        value = float(np.mean(vals))
        trial.set_user_attr("per_category", res)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    done_before = len([t for t in study.trials if t.state.name == "COMPLETE"])
    for i in range(cfg.trials):
        study.optimize(objective, n_trials=1, catch=())
        t = study.trials[-1]
        echo(f"trial {t.number}: {cfg.metric}(validation) = {format_value(t.value)}  params {t.params}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise ConfigError(f"study {name!r} has no finished trial; run with --trials N > 0")
    best = study.best_trial
    best_params = _params_from_trial(cfg, best.params)
    echo(f"best trial {best.number} of {len(complete)} ({len(complete) - done_before} run now): {cfg.metric}(validation) = "
         f"{format_value(best.value)}  params {best_params}")
    echo(f"refitting the best parameters; final figures on the {n_hold} HELD-OUT test images only (not used by the search):")
    final = evaluate_params(best_params, 2)
    rows = [{"method": cfg.method, "category": cat, "split": "held-out", "n_test": len(parts[cat][2]),
             **{k: v for k, v in m.items()}, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in best_params.items()}}
            for cat, m in final.items()]
    echo(format_table(rows, ("method", "category", "split", "n_test", *METRIC_KEYS)))
    trials_rows = [{"trial": t.number, "state": t.state.name, "value": t.value, "metric": cfg.metric,
                    **{f"param_{k}": v for k, v in _params_from_trial(cfg, t.params).items()}} for t in study.trials]
    write_csv(trials_rows, out / f"{name}_trials.csv")
    summary = {"study_name": name, "storage": storage, "method": cfg.method, "categories": cats, "metric": cfg.metric,
               "objective_split": {"kind": "validation part of the test set", "fraction": cfg.val_fraction,
                                   "seed": cfg.seed, "stratified_by": "label", "n_images": n_val},
               "final_split": {"kind": "held-out part of the test set (never seen by the search)", "n_images": n_hold},
               "fixed_params": cfg.params, "search": cfg.search, "n_trials": len(complete),
               "best": {"trial": best.number, "validation_value": best.value, "params": best_params},
               "final": final}
    path = out / f"{name}.json"
    atomic_write_text(path, json.dumps(summary, indent=2, default=str))
    echo(f"summary: {path}; trials: {out / (name + '_trials.csv')}")
    return summary
