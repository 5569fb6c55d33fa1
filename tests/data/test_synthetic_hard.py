"""The hard development benchmark (synthetic-hard): deterministic, MVTec layout, exact and thin masks,
grayscale files, 1:2 images, and --data synthetic-hard selecting it in every command."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt

from flawmap.data import (
    Transform,
    ensure_hard_dataset,
    ensure_synthetic_dataset,
    list_categories,
    load_image,
    load_split,
    make_synthetic_mvtec,
    resolve_data_root,
    scan_category,
    synthetic as syn,
)
from flawmap.data.synthetic_hard import HARD_CATEGORIES, HARD_DEFECTS, RENDERERS
from flawmap.errors import ConfigError

SMALL = dict(n_train=2, n_test_good=2, n_test_defect=6, size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hard_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_mvtec(tmp_path_factory.mktemp("hard") / "a", categories=HARD_CATEGORIES, seed=5, **SMALL)


def test_same_seed_same_bytes_other_seed_differs(hard_root: Path, tmp_path: Path) -> None:
    again = _files(make_synthetic_mvtec(tmp_path / "b", categories=HARD_CATEGORIES, seed=5, **SMALL))
    assert again == _files(hard_root) and len(again) == 4 * (2 + 2 + 6 + 6)
    other = _files(make_synthetic_mvtec(tmp_path / "c", categories=HARD_CATEGORIES, seed=6, **SMALL))
    assert other.keys() == again.keys()
    images = [k for k in again if not k.endswith("_mask.png")]
    assert all(other[k] != again[k] for k in images)


def test_layout_and_masks(hard_root: Path) -> None:
    assert list_categories(hard_root) == sorted(HARD_CATEGORIES)
    for cat in HARD_CATEGORIES:
        data = scan_category(hard_root, cat)  # every defective image has its ground_truth/<type>/<stem>_mask.png
        types = HARD_DEFECTS[cat]
        assert data.has_ground_truth and len(data.train) == 2
        assert data.test_counts == {"good": 2, **{t: 6 // len(types) for t in types}}
        for smp in data.test:
            if smp.label == 1:
                assert smp.mask_path is not None
                mask = np.asarray(Image.open(smp.mask_path)) > 0
                assert mask.shape == load_image(smp.path).shape[:2]  # the image's size
                assert mask.any()
                assert not mask[[0, -1]].any() and not mask[:, [0, -1]].any()  # inside the image, not cut by its edge
        native = (128, 64) if cat == "tall_part" else (64, 64)  # no resampling: every mask keeps its pixels
        split = load_split(data, "test", Transform(native), workers=2)
        assert split.images.shape[1] == 3 and split.masks is not None
        assert (split.masks.flatten(1).any(1).numpy() == (split.labels == 1)).all()


@pytest.mark.parametrize("kind, defect, max_half_width", [("rotated_part", "scratch", 2.3), ("gray_part", "scratch", 2.3),
                                                          ("tall_part", "scratch", 2.3), ("oriented_texture", "crack", 1.5)])
def test_thin_defects_are_thin(kind: str, defect: str, max_half_width: float) -> None:
    """Scratches are 1-3 px wide, cracks 1-2 px: the largest distance from a mask pixel to the outside
    (2 for a 3-px line, 1 for a 1-px line) stays at most ~2 (~1.4 for cracks); dents are wider."""
    for k in range(8):
        img, mask = RENDERERS[kind](np.random.default_rng([0, k]), np.random.default_rng(0), 128, defect)
        assert mask is not None and 5 <= mask.sum() < 0.01 * mask.size
        assert distance_transform_edt(np.pad(mask, 1)).max() <= max_half_width
        good, _ = RENDERERS[kind](np.random.default_rng([0, k]), np.random.default_rng(0), 128, None)
        changed = np.abs(img - good).max(-1) if img.ndim == 3 else np.abs(img - good)
        assert (changed[mask] > 0).mean() > 0.9 and not (changed[~mask] > 0).any()  # the mask is what changed
    _, dent = RENDERERS["rotated_part"](np.random.default_rng(1), np.random.default_rng(0), 256, "dent")
    assert dent is not None and distance_transform_edt(np.pad(dent, 1)).max() > 2.3


def test_grayscale_files_and_loading(hard_root: Path) -> None:
    for p in (hard_root / "gray_part").rglob("*.png"):
        with Image.open(p) as im:
            assert im.mode == "L"  # one channel on disk
    for p in (hard_root / "oriented_texture" / "test").rglob("*.png"):
        with Image.open(p) as im:
            a = np.asarray(im)
        assert a.ndim == 3 and a.shape[2] == 3 and (a == a[..., :1]).all()  # three identical channels
    split = load_split(scan_category(hard_root, "gray_part"), "train", Transform(32), workers=2)
    assert split.images.shape == (2, 3, 32, 32)
    assert (split.images == split.images[:, :1]).all() and split.images.std() > 0.05  # decoded to grey RGB


def test_tall_images_and_defects_near_the_ends(hard_root: Path) -> None:
    for p in (hard_root / "tall_part").rglob("*.png"):
        with Image.open(p) as im:
            assert im.size == (64, 128)  # W x H = 1:2
    img, mask = RENDERERS["tall_part"](np.random.default_rng(0), np.random.default_rng(0), 64, None)
    assert img.shape == (128, 64, 3) and mask is None
    rows = img.mean((1, 2))
    assert rows[5:10].mean() > rows[0] + 0.1 and rows[-8:-5].mean() > rows[-1] + 0.02  # the bolt fills the height
    for k in range(10):  # chipped ends sit in the outer 9% of the height: a centre crop cuts them away
        _, chip = RENDERERS["tall_part"](np.random.default_rng([1, k]), np.random.default_rng(0), 128, "chipped_end")
        assert chip is not None and chip.any()
        ys = np.nonzero(chip)[0] / chip.shape[0]
        assert (ys < 0.09).all() or (ys > 0.91).all()
        assert Transform(256, 224).mask_array(chip).sum() < 0.5 * Transform(256).mask_array(chip).sum()


def test_rotated_parts_turn_all_the_way(hard_root: Path, tmp_path: Path) -> None:
    """Parts at any angle: the principal axis of the bright part takes angles all round the half circle."""
    root = make_synthetic_mvtec(tmp_path, categories=("rotated_part",), n_train=12, n_test_good=1, n_test_defect=0,
                                size=64, seed=0)
    angles = []
    for p in sorted((root / "rotated_part" / "train" / "good").iterdir()):
        fg = load_image(p).astype(float).mean(-1) > 110
        yy, xx = np.nonzero(fg)
        w, v = np.linalg.eigh(np.cov(np.stack([xx - xx.mean(), yy - yy.mean()])))
        angles.append(np.arctan2(v[1, 1], v[0, 1]) % np.pi)
        assert abs(yy.mean() - 32) < 6 and abs(xx.mean() - 32) < 6  # a small shift only
    gaps = np.diff(np.concatenate([np.sort(angles), [np.sort(angles)[0] + np.pi]]))
    assert gaps.max() < np.pi / 2


@pytest.fixture
def tiny_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """FLAWMAP_DATA_HOME in tmp_path and a small synthetic-hard (the real one takes seconds to generate)."""
    monkeypatch.setenv("FLAWMAP_DATA_HOME", str(tmp_path / "home"))
    spec = dataclasses.replace(syn.EMBEDDED_DATASETS["synthetic-hard"], n_train=10, n_test_good=2, n_test_defect=3,
                               size=64)
    monkeypatch.setitem(syn.EMBEDDED_DATASETS, "synthetic-hard", spec)
    return tmp_path / "home" / syn.HARD_VERSION


def test_embedded_names_resolve(tiny_embedded: Path, tmp_path: Path) -> None:
    assert syn.EMBEDDED_DATASETS["synthetic-hard"].categories == HARD_CATEGORIES
    assert syn.EMBEDDED_DATASETS["synthetic"].folder == "synthetic-v2"  # the default benchmark is unchanged
    assert resolve_data_root("synthetic-hard") == tiny_embedded == ensure_hard_dataset()
    assert list_categories(tiny_embedded) == sorted(HARD_CATEGORIES)
    assert not (tmp_path / "home" / "synthetic-v2").exists()  # only the named dataset is generated
    assert resolve_data_root(None) == tmp_path / "home" / "synthetic-v2" == ensure_synthetic_dataset()
    assert resolve_data_root("./synthetic-hard") == Path("synthetic-hard")  # a folder of that name
    assert resolve_data_root(str(tmp_path)) == tmp_path
    with pytest.raises(ConfigError, match="synthetic-hard"):
        ensure_synthetic_dataset(name="synthetic-hardest")


def test_cli_data_synthetic_hard(tiny_embedded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flawmap.cli import _fit_sources, build_parser, main

    out = tmp_path / "res"
    assert main(["--no-progress", "bench", "--data", "synthetic-hard", "--categories", "tall_part", "--methods", "padim",
                 "--resize", "32", "--crop", "0", "--gallery", "0", "--no-report", "--out", str(out)]) == 0
    assert f"--data synthetic-hard: using the embedded MVTec-layout dataset at {tiny_embedded}" in capsys.readouterr().out
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["category"] == "tall_part" and rows[0]["n_test"] == "5"
    args = build_parser().parse_args(["fit", "--data", "synthetic-hard", "--category", "gray_part", "--out", str(tmp_path / "m")])
    plan = _fit_sources(args)  # flawmap fit --data synthetic-hard reads the same folder
    assert len(plan.files) == 10 and plan.val_good is None
    assert all(f.parent == tiny_embedded / "gray_part" / "train" / "good" for f in plan.files)
