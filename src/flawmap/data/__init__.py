"""Datasets: image decoding, the MVTec AD layout, transforms and a synthetic MVTec-style generator."""

from __future__ import annotations

from .images import IMAGE_SUFFIXES, load_image, load_mask
from .mvtec import CategoryData, Sample, Split, Transform, list_categories, preprocessing, scan_category
from .loading import find_images, load_files, load_folder, load_images, load_split
from .synthetic import default_synthetic_root, ensure_synthetic_dataset, make_synthetic_mvtec

__all__ = [
    "IMAGE_SUFFIXES",
    "CategoryData",
    "Sample",
    "Split",
    "Transform",
    "default_synthetic_root",
    "ensure_synthetic_dataset",
    "find_images",
    "list_categories",
    "load_files",
    "load_folder",
    "load_image",
    "load_images",
    "load_mask",
    "load_split",
    "make_synthetic_mvtec",
    "preprocessing",
    "scan_category",
]
