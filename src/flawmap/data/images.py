"""Decoding image and mask files into plain numpy arrays (RGB uint8 images, bool masks)."""

from __future__ import annotations

import io
import logging
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_TIFF_SUFFIXES = (".tif", ".tiff")
# PIL modes that convert losslessly enough to 8-bit RGB / RGBA with PIL itself.
_TO_RGB = {"1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "P": "RGBA", "PA": "RGBA",
           "La": "LA", "RGBa": "RGBA", "RGBX": "RGB"}
_NATIVE = {"L", "LA", "RGB", "RGBA", "I", "F"}


class ImageTooLargeError(DataError):
    """An image (or its encoded bytes) is over a configured size limit."""


def _from_pil(source: Path | io.BytesIO, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode with PIL into a channel-last array of the file's native depth."""
    with Image.open(source) as im:
        _check_pixels(im.size[0], im.size[1], name, max_pixels)  # from the header, before decoding
        im.load()  # decode now so truncated/corrupt files fail here
        mode = im.mode
        if mode in _TO_RGB:
            im = im.convert(_TO_RGB[mode])
        elif mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16)
        elif mode not in _NATIVE:
            raise DataError(f"image {name}: unsupported image mode {mode!r}")
        return np.array(im)


def _check_pixels(w: int, h: int, name: str, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(f"image {name} is {w}x{h} px (WxH) = {w * h} pixels, over the limit of {max_pixels}")


def _from_tifffile(source: Path | io.BytesIO, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Exact decoding of grayscale/RGB TIFFs of any depth (PIL mangles 16-bit multi-channel TIFFs)."""
    import tifffile

    with tifffile.TiffFile(source) as tif:
        page = tif.pages[0]
        photometric = getattr(page.photometric, "name", str(page.photometric))
        if photometric not in ("MINISBLACK", "RGB"):
            raise ValueError(f"photometric {photometric} left to PIL")
        _check_pixels(int(page.imagewidth), int(page.imagelength), name, max_pixels)
        arr = np.asarray(page.asarray())
        if arr.ndim == 3 and getattr(page.planarconfig, "name", "") == "SEPARATE":
            arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) -> (H, W, C)
    return arr


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _decode_raw(open_source, name: str, what: str, is_tiff: bool, max_pixels: int | None) -> np.ndarray:
    """Decode to (H, W) or (H, W, C) with C in 1..4; any failure -> DataError naming ``name``.
    ``open_source()`` returns a fresh Path or BytesIO (TIFFs may be tried twice)."""
    arr: np.ndarray | None = None
    if is_tiff:
        try:
            arr = _from_tifffile(open_source(), name, max_pixels)
        except ImageTooLargeError:
            raise
        except Exception as tiff_err:  # palette, CMYK, JPEG-in-TIFF, missing codecs...: PIL may manage
            logger.debug("tifffile cannot read %s (%s); trying PIL", name, tiff_err)
    try:
        if arr is None:
            arr = _from_pil(open_source(), name, max_pixels)
    except DataError:
        raise
    except Image.DecompressionBombError as err:  # PIL's own limit, above any max_pixels given
        raise ImageTooLargeError(f"{what} {name}: {err}") from err
    except Exception as err:  # PIL raises many types: OSError, SyntaxError, ValueError, ...
        raise DataError(f"cannot read {what} {name}: not a valid or complete image file ({type(err).__name__}: {err})") from err
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)) or arr.size == 0:
        raise DataError(f"{what} {name}: unsupported array shape {arr.shape} (expected HxW or HxWxC with C<=4)")
    return arr


def _read_raw(path: str | PathLike[str], what: str) -> tuple[Path, np.ndarray]:
    """Decode a file to (H, W) or (H, W, C) with C in 1..4; any failure -> DataError naming the path."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file not found: {p}")
    return p, _decode_raw(lambda: p, str(p), what, p.suffix.lower() in _TIFF_SUFFIXES, None)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any bit depth to uint8 (16-bit by 255/65535 with rounding, never by clipping)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        a = arr.astype(np.int64)
        top = 65535 if (arr.dtype.itemsize <= 2 or a.max(initial=0) <= 65535) else int(np.iinfo(arr.dtype).max)
        return ((np.clip(a, 0, top) * 255 + top // 2) // top).astype(np.uint8)
    a = np.nan_to_num(arr.astype(np.float64))
    hi = float(a.max(initial=0.0))
    scale = 255.0 if hi <= 1.0 else (1.0 if hi <= 255.0 else (255.0 / 65535.0 if hi <= 65535.0 else 255.0 / hi))
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)


def load_image(path: str | PathLike[str]) -> np.ndarray:
    """Read any supported image as RGB uint8 (H, W, 3); alpha is composited on black.

    Raises DataError naming the file for missing, truncated, corrupt or unsupported files.
    """
    return _as_rgb(_read_raw(path, "image")[1])


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int | None = None) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, BMP, TIFF) -> RGB uint8 (H, W, 3), with the rules of ``load_image``.

    Raises DataError naming ``name`` for empty, truncated, corrupt or unsupported data, and
    ImageTooLargeError (a DataError) when width * height exceeds ``max_pixels`` (checked from the header,
    before the pixels are decoded).
    """
    if not data:
        raise DataError(f"image {name}: empty (0 bytes)")
    return _as_rgb(_decode_raw(lambda: io.BytesIO(data), name, "image", data[:4] in _TIFF_MAGIC, max_pixels))


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) of any depth -> RGB uint8 (H, W, 3); alpha is composited on black."""
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    channels = arr.shape[-1]
    if channels in (2, 4):  # colour + alpha: composite on black
        color, alpha = arr[..., :-1].astype(np.uint32), arr[..., -1:].astype(np.uint32)
        arr = ((color * alpha + 127) // 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def read_mask(path: str | PathLike[str]) -> tuple[np.ndarray, bool]:
    """Read a ground-truth mask -> (bool (H, W), is_binary).

    Rule: any nonzero pixel (in any colour channel) is defect. A mask is *binary* when its pixels take
    at most one nonzero value (MVTec masks are 0/255; 0/1 also counts); a grey or anti-aliased mask is
    not, and callers warn about it (it is still binarised at > 0).
    """
    _, arr = _read_raw(path, "mask")
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = arr[..., :-1]  # the alpha channel is not part of the label
    flat = arr.reshape(-1, arr.shape[-1]) if arr.ndim == 3 else arr.reshape(-1, 1)
    defect = np.any(flat != 0, axis=1)
    binary = len(np.unique(flat[defect], axis=0)) <= 1
    return np.ascontiguousarray(defect.reshape(arr.shape[:2])), bool(binary)


def load_mask(path: str | PathLike[str]) -> np.ndarray:
    """Read a ground-truth mask as bool (H, W): any nonzero pixel (in any colour channel) is defect."""
    return read_mask(path)[0]


#: images with a side shorter than this are refused: upsampling a few pixels to the model input
#: invents the texture the detector is meant to judge (an 8x8 icon, a 1-px line, a 4000x10 strip)
MIN_IMAGE_SIDE = 16
#: an image whose aspect ratio differs from the transform output's by more than this factor is
#: stretched visibly by the resize: warned about, not refused
MAX_ASPECT_DISTORTION = 2.0


def check_image_size(img: np.ndarray, path: str | PathLike[str], output_size: tuple[int, int] | None = None,
                     distorted: list[Path] | None = None) -> np.ndarray:
    """Refuse (DataError) an image with a side under MIN_IMAGE_SIDE px; append its path to ``distorted``
    when resizing to ``output_size`` (h, w) stretches it by more than MAX_ASPECT_DISTORTION. Returns img."""
    h, w = img.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise DataError(f"image {path} is {w}x{h} px (WxH); images must be at least {MIN_IMAGE_SIDE} px on each side")
    if output_size is not None and distorted is not None:
        oh, ow = output_size
        ratio = (w / h) / (ow / oh)
        if max(ratio, 1 / ratio) > MAX_ASPECT_DISTORTION:
            distorted.append(Path(path))
    return img


def warn_distorted(paths: list[Path], output_size: tuple[int, int], limit: int = 5) -> None:
    """One warning naming the images (the first ``limit``) that the resize stretches."""
    if not paths:
        return
    names = ", ".join(str(p) for p in paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
    logger.warning("%d image(s) have an aspect ratio more than %gx off the model input %dx%d (WxH) and are stretched "
                   "by the resize: %s", len(paths), MAX_ASPECT_DISTORTION, output_size[1], output_size[0], names)
