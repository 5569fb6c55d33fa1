"""Corruption pictures, written once at bench time where the corruption is applied, read by the report.

``<out>/artifacts/corruptions/`` holds, for a sweep with test-time corruptions, one example test image
(a defective one when there is one):

* ``clean.png`` and ``<name>_s<severity>.png``: every corruption and severity of the sweep (its seed,
  p = 1), at the sweep's resolution (at most 224 px);
* ``catalogue_<name>_s<severity>.png``: every corruption of ``flawmap.data.corruptions`` at the
  severities ``CATALOGUE_SEVERITIES`` (seed 0, p = 1, 160 px);
* ``source.txt``: the path of the example image.

The report copies these files; it never reads the dataset or applies a corruption itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..data import Transform, load_image, scan_category
from ..io import atomic_write, atomic_write_text
from .runner import RunSpec

ARTIFACTS = "artifacts"
CORRUPTION_PICTURES = "corruptions"
CATALOGUE_SEVERITIES = (1, 3, 5)
CATALOGUE_SIZE = 160
SOURCE_NAME = "source.txt"


def pictures_folder(out: Path) -> Path:
    """<out>/artifacts/corruptions: where a bench folder keeps its corruption pictures."""
    return Path(out) / ARTIFACTS / CORRUPTION_PICTURES


def sweep_name(corruption: str, severity: int) -> str:
    return f"{corruption}_s{severity}.png"


def catalogue_name(corruption: str, severity: int) -> str:
    return f"catalogue_{corruption}_s{severity}.png"


def _corrupted(name: str, img: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    """(1, 3, h, w) -> the image under one corruption at p = 1."""
    from ..data.corruptions import corrupt

    return corrupt(name, img, severity, seed, p=1.0)[0]


def corruption_pictures(out: Path, specs: Sequence[RunSpec], size: int = 224) -> list[Path]:
    """Write the pictures of the module docstring that are not there yet; returns the files written."""
    from ..data.corruptions import CORRUPTIONS
    from ..viz.heatmap import save_png, to_uint8_image

    wanted = sorted({(s.corruption, s.severity, s.corruption_seed) for s in specs if s.corruption})
    if not wanted:
        return []
    folder = pictures_folder(out)
    first = next(s for s in specs if s.corruption)
    data = scan_category(first.data_root, first.category)
    sample = next((s for s in data.test if s.label == 1), data.test[0])
    image = load_image(sample.path)
    img = Transform(resize=min(size, min(first.transform().output_size)))(image)[None]  # (1, 3, h, w)
    small = Transform(resize=CATALOGUE_SIZE)(image)[None]
    pictures = {"clean.png": lambda: img}
    for name, sev, seed in wanted:
        pictures[sweep_name(name, sev)] = lambda name=name, sev=sev, seed=seed: _corrupted(name, img, sev, seed)
    for name in CORRUPTIONS:
        for sev in CATALOGUE_SEVERITIES:
            pictures[catalogue_name(name, sev)] = lambda name=name, sev=sev: _corrupted(name, small, sev, 0)
    written = []
    for fname, make in pictures.items():
        path = folder / fname
        if not path.is_file():
            x = make()
            atomic_write(path, lambda tmp, x=x: save_png(to_uint8_image(x[0].numpy()), tmp))
            written.append(path)
    atomic_write_text(folder / SOURCE_NAME, f"{sample.path}\n")
    return written


def source_image_name(folder: Path) -> str | None:
    """File name of the example image recorded in ``folder/source.txt`` (None: not recorded)."""
    src = Path(folder) / SOURCE_NAME
    return Path(src.read_text().strip()).name if src.is_file() else None


__all__ = ["ARTIFACTS", "CATALOGUE_SEVERITIES", "CORRUPTION_PICTURES", "catalogue_name", "corruption_pictures",
           "pictures_folder", "source_image_name", "sweep_name"]
