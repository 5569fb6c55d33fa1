"""benchmarks/make_rotated_bottle.py on a tiny fake MVTec category: layout, masks moved with their images,
no defect pushed out of the frame, same bytes for the same seed, refusal to overwrite."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flawmap.data import load_image, load_mask, scan_category

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_rotated_bottle.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_rotated_bottle", _SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_bottle(root: Path) -> Path:
    """A 'bottle' category: a dark disk on white (96 px); defects are bright squares, their masks the squares."""
    cat = root / "bottle"
    yy, xx = np.mgrid[0:96, 0:96]
    disk = np.hypot(yy - 48, xx - 48) < 40
    base = np.where(disk[..., None], 40, 250).astype(np.uint8).repeat(3, 2)
    for split, name in (("train/good", "000"), ("train/good", "001"), ("test/good", "000")):
        (cat / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(base).save(cat / split / f"{name}.png")
    for i, (y, x) in enumerate(((30, 30), (50, 70), (20, 48))):  # the last one near the rim, 20 px from the edge
        img, mask = base.copy(), np.zeros((96, 96), np.uint8)
        img[y:y + 10, x:x + 10] = 220
        mask[y:y + 10, x:x + 10] = 255
        for d, a in (("test/broken", img), ("ground_truth/broken", mask)):
            (cat / d).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(cat / "test/broken" / f"{i:03d}.png")
        Image.fromarray(mask).save(cat / "ground_truth/broken" / f"{i:03d}_mask.png")
    (cat / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    return cat


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rotated_copy(script, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _fake_bottle(tmp_path / "src")
    out = tmp_path / "out"
    assert script.main(["--src", str(src), "--out", str(out), "--seed", "0", "--shift", "0.15"]) == 0
    assert "flawmap bench --data" in capsys.readouterr().out
    data = scan_category(out, "bottle")
    orig = scan_category(src.parent, "bottle")
    assert len(data.train) == 2 and data.test_counts == orig.test_counts == {"good": 1, "broken": 3}
    assert (out / "bottle" / "license.txt").is_file()
    meta = json.loads((out / "bottle" / script.MARKER).read_text())
    assert meta["seed"] == 0 and len(meta["files"]) == 6
    angles = [f["angle_deg"] for f in meta["files"]]
    assert len(set(angles)) == 6 and all(0 <= a < 360 for a in angles)
    assert all(0.85 <= f["scale"] <= 1.15 for f in meta["files"]) and len({f["scale"] for f in meta["files"]}) == 6
    scale = {f["file"]: f["scale"] for f in meta["files"]}
    for smp, old in zip(data.test, orig.test):
        img = load_image(smp.path)
        assert img.shape == load_image(old.path).shape
        assert not np.array_equal(img, load_image(old.path))
        if smp.label == 1:  # the mask moved with its defect, none of it lost
            mask, before = load_mask(smp.mask_path), load_mask(old.mask_path)
            assert mask.sum() >= script.MIN_KEPT * before.sum() * scale[old.path.relative_to(src).as_posix()] ** 2
            grey = img.mean(-1)
            inner = mask & np.roll(mask, 2, 0) & np.roll(mask, -2, 0) & np.roll(mask, 2, 1) & np.roll(mask, -2, 1)
            assert grey[inner].min() > 150 and np.median(grey[~mask & (grey < 150)]) < 60  # bright square under it
    corners = load_image(data.train[0].path)[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 200).all()  # uncovered corners filled with the white background, not black

    again = tmp_path / "again"
    assert script.main(["--src", str(src), "--out", str(again), "--seed", "0", "--shift", "0.15"]) == 0
    assert _files(again) == _files(out)  # same seed, same bytes
    other = tmp_path / "other"
    assert script.main(["--src", str(src), "--out", str(other), "--seed", "1", "--shift", "0.15"]) == 0
    assert _files(other)["bottle/train/good/000.png"] != _files(out)["bottle/train/good/000.png"]
    stamp = (out / "bottle" / "train" / "good" / "000.png").stat().st_mtime_ns
    assert script.main(["--src", str(src), "--out", str(out), "--seed", "0", "--shift", "0.15"]) == 0  # already there
    assert (out / "bottle" / "train" / "good" / "000.png").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="other parameters"):
        script.main(["--src", str(src), "--out", str(out), "--seed", "3"])
    (tmp_path / "taken" / "bottle").mkdir(parents=True)
    (tmp_path / "taken" / "bottle" / "mine.txt").write_text("x")
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        script.main(["--src", str(src), "--out", str(tmp_path / "taken")])
    assert script.main(["--src", str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # not a category folder


def test_default_out_is_outside_the_repo(script, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLAWMAP_DATA_HOME", str(tmp_path))
    assert script.default_out("bottle", 0) == tmp_path / "rotated-bottle-seed0"
    monkeypatch.delenv("FLAWMAP_DATA_HOME")
    assert script.default_out("bottle", 2) == Path.home() / ".cache" / "flawmap" / "rotated-bottle-seed2"
