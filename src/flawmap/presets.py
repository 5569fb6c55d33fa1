"""Presets: named sets of per-method hyperparameters and preprocessing, one mechanism everywhere.

    flawmap fit --method fastflow --preset fast ...        flawmap bench --preset fast ...
    flawmap tune --preset fast ...                         flawmap list --presets
    get_detector("fastflow", preset="fast", lr=1e-3)       # YAML: `preset: fast` (sweep, study, tune)

A preset only records what it changes from a method's paper defaults (``get_detector(name)`` with no
preset IS the paper); a method the preset does not name runs with its paper settings. An explicit
parameter always wins: the preset's values are the base and ``--param`` / keyword arguments go on top;
likewise an explicit ``--resize`` / ``--crop`` / ``--aspect`` wins over the preset's preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError

_NOT_SETTINGS = ("device", "seed", "checkpoint_dir")


@dataclass(frozen=True)
class Preset:
    """A named set of changes from the papers: ``params[method]`` (hyperparameters) and
    ``preprocessing[method]`` (keyword arguments of ``flawmap.data.preprocessing``: resize, crop, aspect)."""

    name: str
    description: str
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    preprocessing: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cost: str = ""  # a short cost statement, shown by `flawmap list --presets` (figures: docs/results.md)

    def params_for(self, method: str) -> dict[str, Any]:
        """The hyperparameters this preset sets for ``method`` ({} = the paper's)."""
        return dict(self.params.get(method, {}))

    def preprocessing_for(self, method: str) -> dict[str, Any]:
        """The preprocessing arguments this preset sets for ``method`` ({} = the paper's)."""
        return dict(self.preprocessing.get(method, {}))

    def changes(self, method: str) -> str:
        """'epochs=3 (paper 500), resize=320 (paper 256)'; 'paper settings' when it changes nothing."""
        from .data import Transform
        from .registry import detector_class

        cls = detector_class(method)
        defaults = cls.default_params()
        paper = Transform.from_dict(dict(cls.paper_transform))
        parts = [f"{k}={_text(v)} (paper {_text(defaults[k])})" for k, v in self.params_for(method).items()]
        parts += [f"{k}={_text(v)} (paper {_text(getattr(paper, k))})" for k, v in self.preprocessing_for(method).items()]
        return ", ".join(parts) or "paper settings"


PAPER = "paper"
CPU_QUICK = "cpu-quick"
FAST = "fast"
FAST_CPU = "fast-cpu"
ACCURATE = "accurate"
#: ``fast``'s stopping rule for the trained methods: a seeded 10% of the TRAINING images held out, patience 10
_STOP = {"val_fraction": 0.1, "patience": 10}
#: RIAD small enough to converge on one CPU core: 64 px, cell sizes {2, 4, 8}, a 16-channel depth-3 U-Net,
#: lr 1e-3, map smoothing sigma 5 (scaled from the paper's 256 px); measured runs: docs/results.md
_RIAD_CPU = {"image_size": 64, "grid_sizes": (2, 4, 8), "base_channels": 16, "depth": 3, "lr": 1e-3, "smoothing": 5}
#: the ``accurate`` PatchCore (chosen on synthetic-hard, confirmed on rotated bottle; docs/results.md, "PatchCore ablation"):
#: efficientnet_lite2's stride-4 stage added (blocks.1, 24 ch) to the paper's stride 8 / 16 stages, and the bank
#: also holding each training image at 90 / 180 / 270 degrees; that bank is 4 x 4096 patches per 256 px image, so
#: it is reduced to a 1% coreset (about the paper's 10% bank in size) 16 training images at a time (coreset_chunk,
#: docs/accurate-preset.md): peak memory one chunk (~0.4 GB) instead of the whole bank (~4 GB and its projection)
ACCURATE_PATCHCORE = {"layers": ("blocks.1", "blocks.2", "blocks.4"), "train_rotations": 3, "coreset_ratio": 0.01,
                      "coreset_chunk": 16}

_PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(PAPER, "every method with its paper's hyperparameters and preprocessing (the defaults)"),
    Preset(CPU_QUICK, "the default `flawmap bench`: shortened to run in minutes on a CPU, NOT the papers' settings "
           "(trained methods far from converged)",
           params={"spade": {"k": 5}, "fastflow": {"epochs": 3},
                   "riad": {"image_size": 64, "grid_sizes": (2, 4, 8), "base_channels": 16, "depth": 3,
                            "epochs": 15, "lr": 1e-3, "smoothing": 5}}),
    Preset(FAST, "the papers' settings, with the trained methods (FastFlow, RIAD) stopped at convergence on a "
           "seeded 10% of the TRAINING images (never the test set), within the paper's epoch budget: FastFlow "
           "when those images' anomaly maps rank their pixels as 10 epochs before (1 - Spearman <= 0.05; its "
           "likelihood never flattens), RIAD after 10 epochs without a lower validation loss (best weights restored)",
           params={"fastflow": dict(_STOP), "riad": dict(_STOP)}),
    Preset(FAST_CPU, "`fast` for a CPU: the same stopping rules, and RIAD, which at the paper's 256 px and 64-channel "
           "U-Net needs a GPU, at 64 px with cell sizes 2/4/8, a 16-channel depth-3 "
           "U-Net, lr 1e-3 and map smoothing 5, NOT the paper's size. "
           "Other methods: paper settings",
           params={"fastflow": dict(_STOP), "riad": {**_RIAD_CPU, **_STOP}},
           cost="bottle, 1 CPU thread: minutes per trained method (measured runs: docs/results.md)"),
    Preset(ACCURATE, "PatchCore for hard parts (rotated, thin defects, grey) with the offline efficientnet_lite2 "
           "its stride-4 stage added to the paper's stride 8 / 16 ones (layers blocks.1, blocks.2, "
           "blocks.4; another backbone needs its own --param layers=...), the memory bank also at 90 / 180 / 270 "
           "degrees (train_rotations=3), 256 px without the centre crop. Other methods: paper settings",
           params={"patchcore": ACCURATE_PATCHCORE},
           preprocessing={"patchcore": {"resize": 256, "crop": 0}},
           cost="320 training images at 256 px (synthetic rotated_part), 2 shared AMD EPYC cores at load 7-8: 5.2 M "
                "patches -> 52 k coreset, fit 2.3x faster than one greedy over the whole bank (83 vs 25 picks/s), "
                "peak RSS 1.8 GB (whole bank: 9.7 GB), predict 340-490 ms/image (docs/accurate-preset.md)"),
)}


def register_preset(preset: Preset) -> Preset:
    """Add a preset (e.g. from a plugin); a name cannot be registered twice with different content."""
    if preset.name in _PRESETS and _PRESETS[preset.name] != preset:
        raise ConfigError(f"preset {preset.name!r} is already registered")
    _PRESETS[preset.name] = preset
    return preset


def list_presets() -> list[str]:
    """Names of the presets, in registration order (paper first)."""
    return list(_PRESETS)


def get_preset(name: str | Preset | None) -> Preset:
    """The preset called ``name`` (None: paper); unknown names raise ConfigError listing the allowed ones."""
    if isinstance(name, Preset):
        return name
    if name is None:
        return _PRESETS[PAPER]
    try:
        return _PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown preset {name!r}; allowed: {', '.join(_PRESETS)} (see `flawmap list --presets`)") from None


def preset_params(preset: str | Preset | None, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters of ``method`` under ``preset``, with the explicit ``params`` on top (they win)."""
    return {**get_preset(preset).params_for(method), **dict(params or {})}


def preset_transform(preset: str | Preset | None, method: str, resize: int | None = None, crop: int | None = None,
                     aspect: str | None = None, *, whole_part: bool = False):
    """The Transform of ``method`` under ``preset``: explicit resize/crop/aspect, else the preset's, else (for a
    user's own folder, ``whole_part``) ``data.transform.WHOLE_PART``, else the paper's (``flawmap.data.preprocessing``,
    the one rule every command uses)."""
    from .data import preprocessing
    from .data.transform import WHOLE_PART
    from .registry import detector_class

    given = {k: v for k, v in (("resize", resize), ("crop", crop), ("aspect", aspect)) if v is not None}
    base = dict(WHOLE_PART) if whole_part else {}
    return preprocessing(detector_class(method).paper_transform,
                         **{**base, **get_preset(preset).preprocessing_for(method), **given})


def preset_of(method: str, row: Mapping[str, Any]) -> str:
    """Which preset a results row ran with: the first preset whose hyperparameters (paper defaults + its
    changes) equal the row's ('paper' first), else 'custom'. device, seed and checkpoint_dir are not compared."""
    from .registry import detector_class

    defaults = detector_class(method).default_params()
    got = {k: _norm(row[k]) for k in defaults if k in row and k not in _NOT_SETTINGS}
    for p in _PRESETS.values():
        want = {**defaults, **p.params_for(method)}
        if got == {k: _norm(want[k]) for k in got}:
            return p.name
    return "custom"


def _norm(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return tuple(_norm(x) for x in v)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _text(v: Any) -> str:
    return "(" + ",".join(map(str, v)) + ")" if isinstance(v, (tuple, list)) else str(v)


__all__ = ["ACCURATE", "CPU_QUICK", "FAST", "PAPER", "Preset", "get_preset", "list_presets", "preset_of", "preset_params",
           "preset_transform", "register_preset"]
