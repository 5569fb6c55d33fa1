"""MVTec AD layout: scanning categories and the Split record (transform: ``data.transform``; loading: ``data.loading``)."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from .images import IMAGE_SUFFIXES
from .transform import Transform, preprocessing

logger = logging.getLogger(__name__)

GOOD = "good"
_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
__all__ = ["CategoryData", "Sample", "Split", "Transform", "list_categories", "preprocessing", "scan_category"]


@dataclass(frozen=True)
class Sample:
    """One image file: label 0 = good, 1 = defect; mask_path is None for good images or no ground truth."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass(frozen=True)
class CategoryData:
    """The files of one category (no pixels decoded)."""

    root: Path
    category: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
    has_ground_truth: bool

    @property
    def path(self) -> Path:
        """The category folder."""
        return self.root / self.category

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect type names of the test split (without "good")."""
        return sorted({s.defect_type for s in self.test if s.label == 1})

    @property
    def test_counts(self) -> dict[str, int]:
        """Number of test images per type, "good" included."""
        return dict(Counter(s.defect_type for s in self.test))

    def fingerprint(self) -> str:
        """16 hex digits identifying the category's files: relative path, size and modification time
        of every train/test image and mask. Changes when a file is added, removed, replaced or edited;
        a sweep stores it with each run and redoes the runs whose dataset changed."""
        h = hashlib.sha256(f"gt={self.has_ground_truth}\n".encode())
        for smp in (*self.train, *self.test):
            for f in (smp.path, smp.mask_path):
                if f is not None:
                    st = f.stat()
                    h.update(f"{f.relative_to(self.path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a data warning once per process (a sweep scans the same category many times)."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _names(paths: Sequence[Path], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower() not in _IGNORED_NAMES


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _image_files(folder: Path, what: str) -> list[Path]:
    """Sorted image files of a folder (hidden files and subfolders ignored); other files or none -> DataError."""
    if not folder.is_dir():
        raise DataError(f"{what} folder not found: {folder}")
    files = [p for p in sorted(folder.iterdir()) if _visible(p) and not p.is_dir()]
    for p in files:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"non-image file {p} in {what} folder (allowed suffixes: {', '.join(IMAGE_SUFFIXES)})")
    if not files:
        raise DataError(f"{what} folder {folder} contains no images")
    return files


def _find_categories(root: Path) -> list[str]:
    return [d.name for d in _subdirs(root) if (d / "train" / GOOD).is_dir()]


def list_categories(root: str | PathLike[str]) -> list[str]:
    """Sorted names of the sub-folders of root that have a train/good folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    if not (cats := _find_categories(root)):
        found = [p.name for p in sorted(root.iterdir()) if _visible(p)]
        raise DataError(f"no categories (folders with train/good) under {root}; found: {found or 'nothing'}")
    return cats


def _find_mask(gt_dir: Path, image: Path) -> Path:
    for name in [f"{image.stem}_mask{s}" for s in IMAGE_SUFFIXES] + [f"{image.stem}{s}" for s in IMAGE_SUFFIXES]:
        if (gt_dir / name).is_file():
            return gt_dir / name
    raise DataError(f"defective test image {image} has no ground-truth mask (expected {gt_dir / (image.stem + '_mask.png')})")


def scan_category(root: str | PathLike[str], category: str) -> CategoryData:
    """Index <root>/<category>/{train/good, test/<type>, ground_truth/<type>/<stem>_mask.png} (no decoding)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    cat_dir = root / category
    if not cat_dir.is_dir():
        raise DataError(f"category folder {cat_dir} not found; available categories under {root}: {_find_categories(root)}")
    train = tuple(Sample(p, 0, GOOD) for p in _image_files(cat_dir / "train" / GOOD, "train/good"))
    test_dir, gt_root = cat_dir / "test", cat_dir / "ground_truth"
    if not test_dir.is_dir():
        raise DataError(f"test folder not found: {test_dir}")
    has_gt = gt_root.is_dir()
    test: list[Sample] = []
    for sub in _subdirs(test_dir):
        files = _image_files(sub, f"test/{sub.name}")
        if sub.name == GOOD:
            test.extend(Sample(p, 0, GOOD) for p in files)
        else:
            test.extend(Sample(p, 1, sub.name, _find_mask(gt_root / sub.name, p) if has_gt else None) for p in files)
    if not test:
        raise DataError(f"test folder {test_dir} has no sub-folders with images (expected test/good, test/<defect>)")
    if has_gt:
        used = {smp.mask_path for smp in test}
        orphans = sorted(f for d in _subdirs(gt_root) for f in sorted(d.iterdir())
                         if _visible(f) and f.is_file() and f not in used)
        if orphans:
            _warn_once(f"{len(orphans)} ground-truth file(s) under {gt_root} belong to no test image and are "
                       f"ignored: {_names(orphans)}")
    if not has_gt:
        logger.info("%s has no ground_truth folder: pixel metrics will be unavailable", cat_dir)
    return CategoryData(root, category, train, tuple(test), has_gt)


@dataclass
class Split:
    """Decoded images of one split: images (N, 3, H, W) float32 in [0, 1] or uint8; labels (N,); masks
    (N, H, W) bool, None when the dataset has no ground truth; ``skipped``: unreadable files left out
    (only with ``skip_bad``)."""

    images: torch.Tensor
    labels: np.ndarray
    masks: torch.Tensor | None
    defect_types: list[str]
    paths: list[Path]
    skipped: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)
