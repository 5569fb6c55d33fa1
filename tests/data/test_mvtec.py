"""MVTec layout scanning, validation messages, Transform and load_split."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flawmap.data import CategoryData, Transform, list_categories, load_split, scan_category
from flawmap.errors import ConfigError, DataError

MVTEC_ROOT = Path(os.environ.get("FLAWMAP_MVTEC_ROOT")
                  or Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec")


def _img(path: Path, value: int, size: tuple[int, int] = (24, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def make_layout(root: Path, category: str = "widget", gt: bool = True, size: tuple[int, int] = (24, 32)) -> Path:
    """3 train, 2 good test, crack x2 and dent x1 defect images (+ masks with a 4x4 square if gt)."""
    cat = root / category
    for i in range(3):
        _img(cat / "train" / "good" / f"{i:03d}.png", 100 + i, size)
    for i in range(2):
        _img(cat / "test" / "good" / f"{i:03d}.png", 110 + i, size)
    for dtype, n in (("crack", 2), ("dent", 1)):
        for i in range(n):
            _img(cat / "test" / dtype / f"{i:03d}.png", 200, size)
            if gt:
                m = np.zeros(size, dtype=np.uint8)
                m[4:8, 4:8] = 255
                (cat / "ground_truth" / dtype).mkdir(parents=True, exist_ok=True)
                Image.fromarray(m).save(cat / "ground_truth" / dtype / f"{i:03d}_mask.png")
    return root


def test_scan_layout_sorted_and_hidden_files_ignored(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    (root / "widget" / "train" / "good" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "widget" / "train" / "good" / "Thumbs.db").write_bytes(b"\x00\x01")
    (root / "notes").mkdir()
    assert list_categories(root) == ["widget"]
    data = scan_category(root, "widget")
    assert isinstance(data, CategoryData) and data.has_ground_truth
    assert [s.path.name for s in data.train] == ["000.png", "001.png", "002.png"]
    assert data.defect_types == ["crack", "dent"]
    assert data.test_counts == {"crack": 2, "dent": 1, "good": 2}
    assert [(s.defect_type, s.label) for s in data.test] == [("crack", 1)] * 2 + [("dent", 1)] + [("good", 0)] * 2
    assert all((s.mask_path is None) == (s.label == 0) for s in data.test)
    assert data.test[0].mask_path == root / "widget" / "ground_truth" / "crack" / "000_mask.png"
    assert scan_category(root, "widget") == data  # deterministic


def test_list_categories_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        list_categories(tmp_path / "nowhere")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="stuff"):
        list_categories(tmp_path)


def test_missing_category_lists_available(tmp_path: Path) -> None:
    make_layout(tmp_path)
    with pytest.raises(DataError, match=r"gadget.*widget"):
        scan_category(tmp_path, "gadget")


def test_non_image_file_in_train(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    (root / "widget" / "train" / "good" / "labels.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="labels.csv"):
        scan_category(root, "widget")


def test_missing_mask_for_defect(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    (root / "widget" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=r"crack.001\.png"):
        scan_category(root, "widget")


def test_empty_and_missing_train(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    train = root / "widget" / "train" / "good"
    for p in train.iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"train.good"):
        scan_category(root, "widget")
    shutil.rmtree(root / "widget" / "train")
    with pytest.raises(DataError, match=r"train.good"):
        scan_category(root, "widget")


def test_missing_test_folder(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    shutil.rmtree(root / "widget" / "test")
    with pytest.raises(DataError, match="test"):
        scan_category(root, "widget")


def test_no_ground_truth_gives_no_masks(tmp_path: Path) -> None:
    root = make_layout(tmp_path, gt=False)
    data = scan_category(root, "widget")
    assert not data.has_ground_truth and all(s.mask_path is None for s in data.test)
    split = load_split(data, "test", Transform(16), workers=2)
    assert split.masks is None and split.labels.tolist() == [1, 1, 1, 0, 0]


def test_load_split_shapes_masks_and_workers(tmp_path: Path) -> None:
    data = scan_category(make_layout(tmp_path), "widget")
    tf = Transform(resize=(12, 16))
    split = load_split(data, "test", tf, workers=2)
    assert split.images.shape == (5, 3, 12, 16) and split.images.dtype == torch.float32
    assert 0.0 <= split.images.min() and split.images.max() <= 1.0
    assert torch.allclose(split.images[0], torch.full((3, 12, 16), 200 / 255))
    assert split.labels.dtype == np.int64 and split.defect_types == ["crack", "crack", "dent", "good", "good"]
    assert split.masks is not None and split.masks.shape == (5, 12, 16) and split.masks.dtype == torch.bool
    assert split.masks[:3].flatten(1).any(1).all() and not split.masks[3:].any()
    assert split.masks[0, 2:4, 2:4].all() and split.masks[0].sum() == 4  # 4x4 square halved
    single = load_split(data, "test", tf, workers=1)
    assert torch.equal(single.images, split.images) and torch.equal(single.masks, split.masks)
    train = load_split(data, "train", tf)
    assert len(train) == 3 and train.labels.tolist() == [0, 0, 0] and not train.masks.any()


def test_mask_of_wrong_size(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(root / "widget" / "ground_truth" / "dent" / "000_mask.png")
    with pytest.raises(DataError, match=r"dent.000_mask\.png.*10x10.*32x24"):
        load_split(scan_category(root, "widget"), "test", Transform(16), workers=2)


def test_corrupt_image_in_split(tmp_path: Path) -> None:
    root = make_layout(tmp_path)
    (root / "widget" / "train" / "good" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"good.001\.png"):
        load_split(scan_category(root, "widget"), "train", Transform(16), workers=2)


def test_transform_sizes_crop_and_binary_masks() -> None:
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[10:30, 20:40] = 255
    mask = img[..., 0] > 0
    tf = Transform(resize=(20, 30), crop=(10, 20))
    tf.validate()
    assert tf.output_size == (10, 20) and Transform(32).output_size == (32, 32)
    out, m = tf(img), tf.mask(mask)
    assert out.shape == (3, 10, 20) and out.dtype == torch.float32 and m.shape == (10, 20) and m.dtype == torch.bool
    assert torch.equal(m, out[0] > 0.5)  # image and mask share the geometry (square now at 0:10, 5:15)
    assert m[:, 5:15].all() and not m[:, :5].any() and not m[:, 15:].any()
    up = Transform(64).mask(np.eye(8, dtype=bool))  # nearest: upscaling an identity gives 8x8 blocks
    assert torch.equal(up, torch.from_numpy(np.kron(np.eye(8), np.ones((8, 8))) > 0))


def test_transform_validate_and_dict_roundtrip() -> None:
    for bad in (Transform(0), Transform(-3), Transform((1, 2, 3)), Transform(True), Transform(16, crop=32),  # type: ignore[arg-type]
                Transform(16, crop=(8, 0)), Transform("256")):  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="Transform"):
            bad.validate()
    tf = Transform(resize=(300, 400), crop=256)
    assert Transform.from_dict(json.loads(json.dumps(tf.to_dict()))) == tf
    assert Transform.from_dict({}) == Transform()
    with pytest.raises(ConfigError, match="colour"):
        Transform.from_dict({"resize": 8, "colour": 1})


def test_load_split_rejects_bad_arguments(tmp_path: Path) -> None:
    data = scan_category(make_layout(tmp_path), "widget")
    with pytest.raises(ConfigError, match="resize"):
        load_split(data, "test", Transform(0))
    with pytest.raises(ConfigError, match="split"):
        load_split(data, "val", Transform(8))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="workers"):
        load_split(data, "test", Transform(8), workers=0)


def test_real_mvtec_bottle_layout() -> None:
    """Reads the real category in place; fails loudly (never skips) when it is missing."""
    if not (MVTEC_ROOT / "bottle").is_dir():
        pytest.fail(f"real MVTec AD data not found at {MVTEC_ROOT / 'bottle'}: expected the shared "
                    "../shared/data/mvtec folder next to the repo, or set FLAWMAP_MVTEC_ROOT to an MVTec root")
    assert "bottle" in list_categories(MVTEC_ROOT)
    data = scan_category(MVTEC_ROOT, "bottle")
    assert data.has_ground_truth and len(data.train) == 209
    assert data.test_counts == {"broken_large": 20, "broken_small": 22, "contamination": 21, "good": 20}
    assert len(data.defect_types) == 3 and sum(s.label for s in data.test) == 63
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in data.test if s.label)
