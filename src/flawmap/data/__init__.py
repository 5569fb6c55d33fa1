"""Datasets: image decoding, the MVTec AD layout, transforms and a synthetic MVTec-style generator.

Image decoding (``images``) and the transform (``transform``) import no torch and are imported here;
the MVTec loader and the synthetic generator are imported on first use (PEP 562), so that the ONNX
runtime can use ``flawmap.data`` without torch.
"""

from __future__ import annotations

from .._lazy import lazy_names
from .images import IMAGE_SUFFIXES, load_image, load_mask
from .transform import Transform, preprocessing

_LAZY = {
    "CategoryData": "mvtec", "Sample": "mvtec", "Split": "mvtec", "list_categories": "mvtec", "scan_category": "mvtec",
    "find_images": "loading", "load_files": "loading", "load_folder": "loading", "load_images": "loading",
    "load_split": "loading",
    "default_synthetic_root": "synthetic", "ensure_synthetic_dataset": "synthetic", "make_synthetic_mvtec": "synthetic",
    "ensure_hard_dataset": "synthetic", "resolve_data_root": "synthetic",
}


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)

__all__ = [
    "IMAGE_SUFFIXES",
    "CategoryData",
    "Sample",
    "Split",
    "Transform",
    "default_synthetic_root",
    "ensure_hard_dataset",
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
    "resolve_data_root",
    "scan_category",
]
