"""The run of a plain ``flawmap bench`` (no CONFIG file, no ``--study``): every method on the embedded
synthetic dataset (texture, object, hard) with the ``cpu-quick`` preset (``flawmap.presets``), report on.

``cpu-quick`` keeps each paper's preprocessing (resize 256, crop 224) and the paper hyperparameters of
the methods that need no training (PatchCore, PaDiM); it shortens what a 2-core CPU cannot afford in a
few minutes: SPADE's image-level K (50 in the paper, more than the 20 training images), FastFlow's 500
epochs and RIAD's 300 epochs at 256 px with a 64-channel U-Net. The trained methods are far from
converged at these settings, so their figures are low and are not the papers'. Flags override any of
it (``--preset``, ``--methods``, ``--param METHOD.KEY=VALUE``, ``--data``, ``--no-report``).
"""

from __future__ import annotations

from ..presets import CPU_QUICK, get_preset
from ..registry import list_detectors
from .config import BenchConfig, MethodConfig


def default_bench_config(preset: str | None = None) -> BenchConfig:
    """The configuration of ``flawmap bench`` without a CONFIG file or ``--study``: every registered method,
    under ``preset`` (default cpu-quick; see the module doc)."""
    name = get_preset(preset or CPU_QUICK).name
    return BenchConfig(methods={m: MethodConfig() for m in list_detectors()}, name=name, preset=name, report=True)


__all__ = ["CPU_QUICK", "default_bench_config"]
