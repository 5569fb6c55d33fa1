"""The run of a plain ``flawmap bench`` (no CONFIG file, no ``--study``): every method on the embedded
synthetic dataset (texture, object, hard) with CPU-quick settings, tagged ``cpu-quick``, report on.

``cpu-quick`` keeps each paper's preprocessing (resize 256, crop 224) and the paper hyperparameters of
the methods that need no training (PatchCore, PaDiM); it shortens what a 2-core CPU cannot afford in a
few minutes: SPADE's image-level K (50 in the paper, more than the 20 training images), FastFlow's 500
epochs and RIAD's 300 epochs at 256 px with a 64-channel U-Net. The trained methods are far from
converged at these settings, so their figures are low and are not the papers'. Flags override any of
it (``--methods``, ``--param METHOD.KEY=VALUE``, ``--data``, ``--no-report``).
"""

from __future__ import annotations

from typing import Any

from ..registry import detector_class
from .config import BenchConfig, MethodConfig

#: experiment tag of the default run (the ``experiment`` column of results.csv)
CPU_QUICK = "cpu-quick"

_NOT_SETTINGS = ("device", "seed", "checkpoint_dir")

#: method -> the hyperparameters cpu-quick changes from the method's (paper) defaults; {} = paper settings
CPU_QUICK_PARAMS: dict[str, dict[str, Any]] = {
    "patchcore": {},
    "padim": {},
    "spade": {"k": 5},
    "fastflow": {"epochs": 3},
    # RIAD's "cpu" preset (detectors/riad.py PRESETS) with 15 instead of 40 epochs
    "riad": {"image_size": 64, "grid_sizes": (2, 4, 8), "base_channels": 16, "depth": 3, "epochs": 15,
             "lr": 1e-3, "smoothing": 5},
}


def default_bench_config() -> BenchConfig:
    """The configuration of ``flawmap bench`` without a CONFIG file or ``--study`` (see the module doc)."""
    methods = {m: MethodConfig(params=dict(p)) for m, p in CPU_QUICK_PARAMS.items()}
    return BenchConfig(methods=methods, name=CPU_QUICK, report=True)


def preset_of(method: str, row: dict[str, Any]) -> str:
    """Which settings a results row ran with: 'paper' (every hyperparameter at the method's default),
    'cpu-quick' (the defaults with CPU_QUICK_PARAMS), else 'custom'. device and seed are not compared."""
    defaults = detector_class(method).default_params()
    got = {k: _norm(row[k]) for k in defaults if k in row and k not in _NOT_SETTINGS}
    for name, changes in (("paper", {}), (CPU_QUICK, CPU_QUICK_PARAMS.get(method))):
        if changes is not None and got == {k: _norm({**defaults, **changes}[k]) for k in got}:
            return name
    return "custom"


def _norm(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return tuple(_norm(x) for x in v)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def preset_changes(method: str) -> str:
    """'epochs=3 (paper 500)' for each hyperparameter cpu-quick changes; 'paper settings' when none."""
    changed = CPU_QUICK_PARAMS.get(method) or {}
    if not changed:
        return "paper settings"
    defaults = detector_class(method).default_params()
    return ", ".join(f"{k}={_text(v)} (paper {_text(defaults[k])})" for k, v in changed.items())


def _text(v: Any) -> str:
    return "(" + ",".join(map(str, v)) + ")" if isinstance(v, (tuple, list)) else str(v)


__all__ = ["CPU_QUICK", "CPU_QUICK_PARAMS", "default_bench_config", "preset_of", "preset_changes"]
