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
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from .device import resolve_device
from .errors import ConfigError, ModelFileError, NotFittedError
from .model_file import JSON_TYPES, check_save_target, is_model_folder, load_detector, read_model_config, write_model
from .params import check_choice, check_layers, check_param_names, check_range
from .progress import progress
from .registry import exportable_detectors
from .types import AnomalyResult

if TYPE_CHECKING:
    from .components.features import FeatureCache

log = logging.getLogger(__name__)

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
    #: True when :meth:`traced_forward` gives the predict path as one graph ``flawmap export`` can trace (ONNX)
    exportable: ClassVar[bool] = False

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

    def traced_forward(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The fitted predict path as one traceable function, images (N, 3, H, W) float32 -> (scores (N,),
        maps (N, H, W)), for ``flawmap export``; ConfigError for a method that is not :attr:`exportable`."""
        raise ConfigError(f"method {self.name!r} cannot be exported to ONNX; exportable methods: "
                          f"{', '.join(exportable_detectors())}")

    # ---- public API -------------------------------------------------------------------------
    def use_feature_cache(self, cache: FeatureCache | None) -> BaseDetector:
        """Where backbone features are cached (``flawmap.detectors.backbone.BackboneDetector``); a detector
        without a backbone (RIAD) has none to cache and ignores it."""
        return self

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
        default_bs: int = getattr(self, "batch_size", 8)
        bs = int(batch_size or default_bs)
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
            if not isinstance(v, JSON_TYPES):
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
        return write_model(self, path, extra, overwrite=overwrite)

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


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def batched(n: int, batch_size: int) -> Sequence[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


#: the model-file loaders (home: flawmap.model_file) and the value checks (home: flawmap.params) stay importable here
__all__ = ["BaseDetector", "as_images", "batched", "check_choice", "check_layers", "check_range", "check_save_target",
           "float_batch", "is_model_folder", "load_detector", "read_model_config", "seeded_generator"]
