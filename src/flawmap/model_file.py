"""The model file: a folder with config.json (format, version, detector name, parameters, learned non-tensor
state, ``extra`` metadata) and model.safetensors (the learned tensors). JSON and safetensors only: loading
never executes code. The detector class is looked up by name in the registry.

    write_model(det, path)      # what BaseDetector.save does
    load_detector(path)         # -> a fitted detector, identical scores
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import ConfigError, ModelFileError
from .io import atomic_replace_dir, check_replaceable, check_writable
from .params import check_param_names

if TYPE_CHECKING:
    from .base import BaseDetector

MODEL_FORMAT = "flawmap-detector"
MODEL_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
TENSORS_NAME = "model.safetensors"
JSON_TYPES = (bool, int, float, str, list, tuple, type(None))


def write_model(det: BaseDetector, path: str | os.PathLike[str], extra: dict[str, Any] | None = None, *,
                overwrite: bool = True) -> Path:
    """Write fitted ``det`` to the folder ``path`` in one step (see ``BaseDetector.save``)."""
    path = Path(path)
    check_save_target(path, overwrite)
    tensors = {k: t.detach().cpu().contiguous() for k, t in det.state_tensors().items()}
    config = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "flawmap_version": __version__,
        "detector": det.name,
        "params": _jsonable(det.get_params()),
        "state": det.state_meta(),
        "extra": extra or {},
    }

    def build(tmp: Path) -> None:
        save_file(tensors, str(tmp / TENSORS_NAME))
        (tmp / CONFIG_NAME).write_text(config_text(config))

    atomic_replace_dir(path, build)
    return path


def config_text(config: dict[str, Any]) -> str:
    """The text of a model folder's config.json (the one serialisation rule: fit, update, recalibration)."""
    return json.dumps(config, indent=2, sort_keys=True)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if isinstance(v, tuple):
            v = list(v)
        if not isinstance(v, JSON_TYPES):
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
        got: Any = config
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
