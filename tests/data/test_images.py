"""load_image / load_mask: every image kind becomes RGB uint8; bad files raise DataError naming them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from flawmap.data import load_image, load_mask
from flawmap.errors import DataError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)


def _png16_rgb(path: Path, arr: np.ndarray) -> None:
    """Write a 16-bit RGB PNG by hand (PIL cannot write them)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _check(img: np.ndarray, shape: tuple[int, int]) -> None:
    assert img.dtype == np.uint8 and img.shape == (*shape, 3) and img.flags.c_contiguous


def test_rgb_png_and_bmp_roundtrip(tmp_path: Path) -> None:
    for name in ("a.png", "a.bmp"):
        Image.fromarray(RGB).save(tmp_path / name)
        img = load_image(tmp_path / name)
        _check(img, (12, 10))
        assert np.array_equal(img, RGB)


def test_gray_and_bilevel(tmp_path: Path) -> None:
    gray = RGB[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    _check(img, (12, 10))
    assert all(np.array_equal(img[..., c], gray) for c in range(3))
    Image.fromarray(gray > 127).save(tmp_path / "b.png")
    assert set(np.unique(load_image(tmp_path / "b.png"))) <= {0, 255}


def test_rgba_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)
    rgba[0, 1] = (200, 100, 50, 128)
    rgba[1, 0] = (255, 255, 255, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    _check(img, (2, 2))
    assert img[0, 0].tolist() == [200, 100, 50]
    assert img[0, 1].tolist() == [100, 50, 25]
    assert img[1, 0].tolist() == [0, 0, 0]


def test_palette(tmp_path: Path) -> None:
    pal = Image.fromarray(RGB).quantize(colors=8)
    pal.save(tmp_path / "p.png")
    expected = np.asarray(pal.convert("RGB"))
    img = load_image(tmp_path / "p.png")
    _check(img, (12, 10))
    assert np.array_equal(img, expected)


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    a16 = np.array([[0, 300, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    assert load_image(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 1, 128, 255]
    rgb16 = RGB.astype(np.uint16) * 257
    _png16_rgb(tmp_path / "rgb16.png", rgb16)
    img = load_image(tmp_path / "rgb16.png")
    _check(img, (12, 10))
    assert np.abs(img.astype(int) - RGB).max() <= 1


@pytest.mark.parametrize("planar", [False, True])
def test_16bit_tiff(tmp_path: Path, planar: bool) -> None:
    rgb16 = RGB.astype(np.uint16) * 257
    if planar:
        tifffile.imwrite(tmp_path / "c.tif", np.moveaxis(rgb16, -1, 0).copy(), photometric="rgb", planarconfig="separate")
    else:
        tifffile.imwrite(tmp_path / "c.tif", rgb16, photometric="rgb")
    img = load_image(tmp_path / "c.tif")
    _check(img, (12, 10))
    assert np.array_equal(img, RGB)
    tifffile.imwrite(tmp_path / "g.tiff", np.array([[0, 300, 65535]], dtype=np.uint16))
    assert load_image(tmp_path / "g.tiff")[0, :, 1].tolist() == [0, 1, 255]


def test_jpeg(tmp_path: Path) -> None:
    flat = np.full((16, 16, 3), (180, 60, 90), dtype=np.uint8)
    Image.fromarray(flat).save(tmp_path / "a.jpg", quality=95)
    img = load_image(tmp_path / "a.jpg")
    _check(img, (16, 16))
    assert np.abs(img.astype(int) - flat).max() <= 4


def test_truncated_png(tmp_path: Path) -> None:
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut_017.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut_017.png"):
        load_image(tmp_path / "cut_017.png")


def test_text_file_named_png_and_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello, not an image")
    with pytest.raises(DataError, match="notes.png"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(DataError, match="notes.png"):
        load_mask(tmp_path / "notes.png")
    with pytest.raises(DataError, match="absent.png"):
        load_image(tmp_path / "absent.png")


def test_masks_any_nonzero_is_defect(tmp_path: Path) -> None:
    m = np.zeros((4, 5), dtype=np.uint8)
    m[1, 2], m[3, 4] = 255, 1
    Image.fromarray(m).save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png")
    assert out.dtype == np.bool_ and out.shape == (4, 5) and out.sum() == 2 and out[3, 4]
    Image.fromarray(m.astype(np.uint16)).save(tmp_path / "m16.png")  # value 1 of 65535 still counts
    assert np.array_equal(load_mask(tmp_path / "m16.png"), m > 0)
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque black: not defect
    rgba[0, 0, 1] = 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ma.png")
    assert load_mask(tmp_path / "ma.png").sum() == 1
