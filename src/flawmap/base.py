"""BaseDetector: the contract every method keeps.

    det = get_detector("patchcore", coreset_ratio=0.1)
    det.fit(train_images)          # -> det; learned state in attributes ending with "_"
    res = det.predict(images)      # -> AnomalyResult(scores (N,), maps (N, H, W)); higher = more anomalous
    det.save(path); load_detector(path)  # identical scores

Images are a float tensor (N, 3, H, W) in [0, 1] (uint8 tensors and numpy (N, H, W, 3) uint8 arrays
are converted). Constructors only store keyword-only hyperparameters; ``fit`` validates them.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .device import resolve_device
from .errors import ConfigError, ModelFileError, NotFittedError
from .io import atomic_replace_dir, check_replaceable, check_writable
from .params import check_choice, check_layers, check_param_names, check_range  # noqa: F401 (check_*: kept importable here)
from .progress import progress
from .types import AnomalyResult

if TYPE_CHECKING:
    from .components.features import FeatureCache

log = logging.getLogger(__name__)

MODEL_FORMAT = "flawmap-detector"
MODEL_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
TENSORS_NAME = "model.safetensors"
_JSON_TYPES = (bool, int, float, str, list, tuple, type(None))


def as_images(images: Any, *, keep_uint8: bool = False) -> torch.Tensor:
    """Convert input images to a float32 tensor (N, 3, H, W) in [0, 1] (``keep_uint8``: uint8 input
    stays uint8, 4x less memory, for detectors that convert batch by batch with ``float_batch``)."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ConfigError(f"numpy images must be uint8 (N, H, W, 3); got {images.dtype} {images.shape}")
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"images must be a torch.Tensor (N, 3, H, W) or numpy uint8 (N, H, W, 3); got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"images must have shape (N, 3, H, W); got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ConfigError("no images given (N = 0)")
    if images.dtype == torch.uint8:
        return images if keep_uint8 else images.float().div_(255.0)
    if not images.is_floating_point():
        raise ConfigError(f"images must be float in [0, 1] or uint8; got {images.dtype}")
    return images.float()


def float_batch(images: torch.Tensor) -> torch.Tensor:
    """A batch of ``as_images(..., keep_uint8=True)`` output as float32 in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


class BaseDetector:
    """Base class: parameters, validation at fit, batched predict, safe save/load."""

    name: ClassVar[str] = "base"
    #: the paper's preprocessing (resize shorter side, then center crop; None = no crop)
    paper_transform: ClassVar[dict[str, int | None]] = {"resize": 256, "crop": 224}
    #: True when ``_fit`` reads its images batch by batch (``float_batch``): uint8 input stays uint8
    streams_uint8: ClassVar[bool] = False

    # ---- parameters -------------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY]

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {p.name: p.default for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY}

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_names()}

    def set_params(self, **params: Any) -> BaseDetector:
        check_param_names(self.name, params, self.param_names())
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def tiny_params(cls) -> dict[str, Any]:
        """Small settings used by the contract test suite (tiny images, few epochs); {} = defaults."""
        return {}

    # ---- hooks for subclasses ---------------------------------------------------------------
    def _validate_params(self) -> None:
        """Raise ConfigError listing allowed values for any bad parameter."""

    def _setup(self) -> None:
        """Build non-learned machinery (backbone, modules) from the parameters; used by fit and load."""

    def _fit(self, images: torch.Tensor) -> None:
        raise NotImplementedError

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) on CPU -> scores (B,), maps (B, H, W)."""
        raise NotImplementedError

    # ---- public API -------------------------------------------------------------------------
    def use_feature_cache(self, cache: FeatureCache | None) -> BaseDetector:
        """Read and write the backbone features of later ``fit``/``predict`` calls in ``cache`` (None,
        the default: compute them, touch no file). Not a hyperparameter and not saved: it changes where
        features come from, never their values. Detectors without a backbone (RIAD) ignore it."""
        self._feature_cache = cache
        return self

    @property
    def feature_cache(self) -> FeatureCache | None:
        """The cache set by :meth:`use_feature_cache` (None: off)."""
        return getattr(self, "_feature_cache", None)

    def _backbone_features(self, images: torch.Tensor, *, batch_size: int | None = None, desc: str | None = None,
                           device: torch.device | str | None = None, cached: bool = True) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) float in [0, 1] -> {layer: (B, C_l, h_l, w_l)} of ``self._backbone``: the
        one feature path of backbone detectors (``extract_features``, through :attr:`feature_cache`
        unless ``cached=False``). On the CPU, or on ``device``; ``batch_size`` None: one batch."""
        from .components.features import extract_features

        return extract_features(self._backbone, images, batch_size=batch_size or max(1, len(images)),  # type: ignore[attr-defined]
                                desc=desc or f"{self.name}: features", device=device,
                                cache=self.feature_cache if cached else None)

    @property
    def device_(self) -> torch.device:
        return resolve_device(getattr(self, "device", "auto"))

    def validate_params(self) -> None:
        """Raise ConfigError for any bad parameter: NaN/inf in any float value (also inside lists),
        then the method's own checks (``_validate_params``)."""
        for k, v in self.get_params().items():
            values = v if isinstance(v, (list, tuple)) else [v]
            if any(isinstance(x, float) and not math.isfinite(x) for x in values):
                raise ConfigError(f"{self.name}: {k}={v!r} is not allowed; it must be a finite number")
        self._validate_params()

    def fit(self, images: Any) -> BaseDetector:
        """Learn what normal looks like from good images (N, 3, H, W) in [0, 1]."""
        self.validate_params()
        x = as_images(images, keep_uint8=self.streams_uint8)
        self._clear_state()
        self._setup()
        self._fit(x)
        self.fitted_ = True
        return self

    def is_fitted(self) -> bool:
        return bool(getattr(self, "fitted_", False))

    def check_is_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(train_images) before predict")

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int | None = None) -> AnomalyResult:
        """Score images (N, 3, H, W) in [0, 1]: AnomalyResult(scores (N,), maps (N, H, W))."""
        self.check_is_fitted()
        x = as_images(images)
        bs = int(batch_size or getattr(self, "batch_size", 8))
        scores, maps = [], []
        starts = range(0, len(x), bs)
        for i in progress(starts, desc=f"{self.name}: predict", total=len(starts), unit="batch"):
            s, m = self._predict(x[i:i + bs])
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
        return AnomalyResult(scores=torch.cat(scores).numpy(), maps=torch.cat(maps).numpy())

    # ---- learned state ----------------------------------------------------------------------
    def _state_names(self) -> list[str]:
        return [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]

    def _clear_state(self) -> None:
        for k in self._state_names():
            delattr(self, k)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors: attributes ending in '_' that are tensors or modules (as 'attr.key')."""
        out: dict[str, torch.Tensor] = {}
        for k in self._state_names():
            v = getattr(self, k)
            if isinstance(v, torch.Tensor):
                out[k] = v
            elif isinstance(v, torch.nn.Module):
                for kk, t in v.state_dict().items():
                    out[f"{k}.{kk}"] = t
        return out

    def state_meta(self) -> dict[str, Any]:
        """Learned non-tensor state (JSON types only)."""
        meta: dict[str, Any] = {}
        for k in self._state_names():
            v = getattr(self, k)
            if isinstance(v, (torch.Tensor, torch.nn.Module)):
                continue
            if not isinstance(v, _JSON_TYPES):
                raise TypeError(f"learned attribute {k} of type {type(v).__name__} cannot be saved as JSON")
            meta[k] = list(v) if isinstance(v, tuple) else v
        return meta

    def save(self, path: str | os.PathLike[str], extra: dict[str, Any] | None = None, *,
             overwrite: bool = True) -> Path:
        """Write the fitted detector to a folder: config.json + model.safetensors (no pickle).

        The folder is built under a temporary name and then exchanged with ``path`` in one step
        (``flawmap.io.atomic_replace_dir``): a crash or kill never leaves a half-written model, and
        never leaves nothing at ``path``. Only a missing path, an empty folder or an existing flawmap
        model folder (the latter only with ``overwrite``) is replaced; anything else raises
        OutputError and is left untouched (``check_save_target``).
        """
        self.check_is_fitted()
        path = Path(path)
        check_save_target(path, overwrite)
        tensors = {k: t.detach().cpu().contiguous() for k, t in self.state_tensors().items()}
        config = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "flawmap_version": __version__,
            "detector": self.name,
            "params": _jsonable(self.get_params()),
            "state": self.state_meta(),
            "extra": extra or {},
        }

        def build(tmp: Path) -> None:
            save_file(tensors, str(tmp / TENSORS_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))

        atomic_replace_dir(path, build)
        return path

    def _load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore learned state; modules must already exist (built in _setup or _build_modules)."""
        for k, v in meta.items():
            setattr(self, k, v)
        self._build_modules()
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for k, t in tensors.items():
            attr, _, sub = k.partition(".")
            if sub:
                modules.setdefault(attr, {})[sub] = t
            else:
                setattr(self, attr, t.to(self.device_))
        for attr, sd in modules.items():
            mod = getattr(self, attr, None)
            if not isinstance(mod, torch.nn.Module):
                raise ModelFileError(f"model file has weights for {attr!r} but {self.name} has no such module")
            mod.load_state_dict(sd, strict=True)

    def _build_modules(self) -> None:
        """Create learned nn.Modules (empty) before their weights are loaded."""


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if isinstance(v, tuple):
            v = list(v)
        if not isinstance(v, _JSON_TYPES):
            raise TypeError(f"parameter {k}={v!r} is not a JSON value")
        out[k] = v
    return out


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder written by ``save``: only config.json (a flawmap detector file)
    and model.safetensors. Only such a folder is ever replaced by ``save``."""
    path = Path(path)
    try:
        names = {p.name for p in path.iterdir()}
        if not names or not names <= {CONFIG_NAME, TENSORS_NAME} or CONFIG_NAME not in names:
            return False
        config = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == MODEL_FORMAT


def check_save_target(path: str | os.PathLike[str], overwrite: bool = True) -> None:
    """The rule for what ``save`` may write over (raises OutputError; see ``flawmap.io.check_replaceable``):
    nothing, an empty folder, or (``overwrite``) a flawmap model folder; and the parent folder must be
    writable. The CLI calls it before fitting, so a refused --out costs no fit."""
    path = Path(path)
    check_replaceable(path, is_model_folder, "flawmap model folder", overwrite)
    check_writable(path.parent)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_config_schema(config: dict[str, Any], cfg_path: Path) -> None:
    """Types of every field of config.json; an error names the field and what it must be."""
    from .registry import list_detectors

    def bad(field: str, must: str) -> ModelFileError:
        got = config
        for part in field.split("."):
            got = got.get(part) if isinstance(got, dict) else None
        shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
        return ModelFileError(f"{cfg_path}: field {field!r} must be {must}; got {shown}")

    if not isinstance(config.get("detector"), str) or config["detector"] not in list_detectors():
        raise bad("detector", f"one of {', '.join(list_detectors())}")
    for key in ("params", "state", "extra"):
        if not isinstance(config.get(key, {}), dict):
            raise bad(key, "a JSON object {name: value}")
    if "params" not in config:
        raise ModelFileError(f"{cfg_path}: field 'params' is missing")
    extra = config.get("extra", {})
    if "transform" in extra:
        from .data import Transform

        tf = extra["transform"]
        if not isinstance(tf, dict):
            raise bad("extra.transform", "an object {resize: int, crop: int or null, aspect: stretch or pad}")
        try:
            Transform.from_dict(tf).validate()
        except (ConfigError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{cfg_path}: field 'extra.transform' is invalid: {exc}") from None
    if extra.get("threshold") is not None and not _finite_number(extra["threshold"]):
        raise bad("extra.threshold", "a finite number or null")
    mr = extra.get("map_range")
    if mr is not None and not (isinstance(mr, list) and len(mr) == 2 and all(_finite_number(v) for v in mr)):
        raise bad("extra.map_range", "a list of two finite numbers [low, high] or null")


def read_model_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON config of a saved model folder, checked for format, version and the type of every
    field (a hand-edited file fails here with the name of the wrong field)."""
    path = Path(path)
    cfg_path, ten_path = path / CONFIG_NAME, path / TENSORS_NAME
    if not cfg_path.is_file() or not ten_path.is_file():
        raise ModelFileError(f"{path} is not a flawmap model folder (expected {CONFIG_NAME} and {TENSORS_NAME})")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{cfg_path}: invalid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{cfg_path}: not a flawmap detector file")
    if config.get("format_version") != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {config.get('format_version')} (written by flawmap "
            f"{config.get('flawmap_version')}) is not supported by flawmap {__version__} "
            f"(format version {MODEL_FORMAT_VERSION}); refit the model with this version"
        )
    _check_config_schema(config, cfg_path)
    return config


def load_detector(path: str | os.PathLike[str], device: str | None = None) -> BaseDetector:
    """Load a detector saved with ``save``. Reads JSON and safetensors only: never executes code.

    The parameters are validated like at fit, the tensors must match the modules the parameters
    build, and when the model records its preprocessing (``extra.transform``, as ``flawmap fit``
    does) one blank image is scored, so tensors that do not fit the parameters (an edited backbone,
    reshaped tensors) fail here with ModelFileError instead of later, mid-prediction.
    """
    from .registry import detector_class

    path = Path(path)
    config = read_model_config(path)
    cfg_path, ten_path = path / CONFIG_NAME, path / TENSORS_NAME
    # JSON has no tuples: sequence parameters come back as lists
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in config["params"].items()}
    if device is not None and "device" in params:
        params["device"] = device
    cls = detector_class(config["detector"])
    try:
        check_param_names(cls.name, params, cls.param_names())
        det = cls(**params)
        det.validate_params()
    except (TypeError, ConfigError) as exc:
        raise ModelFileError(f"{cfg_path}: field 'params' is invalid for {cls.name}: {exc}") from None
    try:
        tensors = load_file(str(ten_path))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{ten_path}: unreadable safetensors file ({exc})") from None
    det._setup()
    try:
        det._load_state(tensors, config.get("state", {}))
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{ten_path}: the tensors do not match the parameters in {CONFIG_NAME} "
                             f"({str(exc).splitlines()[0]})") from None
    det.fitted_ = True
    tf = config.get("extra", {}).get("transform")
    if tf is not None:
        from .data import Transform

        h, w = Transform.from_dict(tf).output_size
        try:
            with torch.no_grad():
                det._predict(torch.zeros(1, 3, h, w))
        except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise ModelFileError(f"{path}: the tensors in {TENSORS_NAME} do not fit the parameters in {CONFIG_NAME} "
                                 f"(was a parameter such as the backbone edited?): {str(exc).splitlines()[0]}") from None
    return det


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def batched(n: int, batch_size: int) -> Sequence[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
