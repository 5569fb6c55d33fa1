"""Image preprocessing: the one ``Transform`` (resize, optional centre crop, [0, 1] floats) and the
``preprocessing`` rule that turns user flags into it. Imports no torch: the ONNX runtime uses it too
(``Transform.to_array``); ``Transform(img)`` returns a torch tensor and imports torch when called.

``aspect`` says what the resize does to an image whose aspect ratio is not the resize box's:

* ``"stretch"`` (default; the papers' and every model saved before the option): resize to the box,
  whatever the image's aspect ratio (a 1:2 part is squashed 2x).
* ``"pad"`` (letterbox): scale the image so that it fits the box (its longer side, relative to the box,
  becomes the box's), centre it and fill the rest with :data:`PAD_VALUE` (black); masks are padded with
  False. Train and test images are padded the same way, so the padding is normal surface to a detector
  (it is in every training image); metrics count the padded pixels as normal pixels. An image of the
  box's aspect ratio is transformed exactly as with "stretch".

Letterboxing rather than keeping the ratio with a per-image (h, w) output: every image of a model must
give the same (H', W') (batches, PaDiM's per-position Gaussians, the ONNX graph's input, ``serve``
uploads of any size), which only a fixed box gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError

_MAX_SIDE = 8192
#: ``Transform.aspect`` values (see the module docstring)
ASPECTS = ("stretch", "pad")
#: the grey level (0-255, every channel) of the letterbox padding
PAD_VALUE = 0
#: the preprocessing of a model fitted on a user's own folder (``flawmap fit --train``), below any preset or flag:
#: the whole image is seen (no centre crop: the papers' 256 -> 224 crop drops the outer 6% on every side, where an
#: edge defect would never be found). Elongated parts stay stretched to the square box: letterboxing them ("pad")
#: spends the box's pixels on padding and measured lower (docs, results page "User-data preprocessing").
#: Benchmarks that reproduce papers keep the papers' preprocessing.
WHOLE_PART: dict[str, Any] = {"crop": 0}


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _check_size(name: str, v: Any, hi: int) -> None:
    ok_int = lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 1 <= x <= hi  # noqa: E731
    if ok_int(v) or (isinstance(v, (tuple, list)) and len(v) == 2 and all(ok_int(x) for x in v)):
        return
    raise ConfigError(f"Transform.{name} must be an int or (height, width) pair of ints in [1, {hi}]; got {v!r}")


@dataclass(frozen=True)
class Transform:
    """Resize (antialiased bilinear) to `resize` (``aspect``: stretched, or letterboxed with "pad"), then
    optional center crop; images -> float [0, 1] tensors."""

    resize: int | tuple[int, int] = 256
    crop: int | tuple[int, int] | None = None
    aspect: str = "stretch"

    def validate(self) -> None:
        """Raise ConfigError if a value is outside its allowed range."""
        if self.aspect not in ASPECTS:
            raise ConfigError(f"Transform.aspect={self.aspect!r} is not allowed; allowed values: "
                              f"{', '.join(map(repr, ASPECTS))} (resize stretches, or letterboxes keeping the ratio)")
        _check_size("resize", self.resize, _MAX_SIDE)
        if self.crop is not None:
            _check_size("crop", self.crop, _MAX_SIDE)
            (rh, rw), (ch, cw) = _pair(self.resize), _pair(self.crop)
            if ch > rh or cw > rw:
                raise ConfigError(f"Transform.crop {(ch, cw)} must not exceed resize {(rh, rw)}")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of transformed images."""
        return _pair(self.crop) if self.crop is not None else _pair(self.resize)

    def content_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a ``height`` x ``width`` image inside the resize box, before the crop: the whole
        box with "stretch"; with "pad" the image scaled to fit the box (rounded half up, at least 1 px), centred
        (an odd margin puts its extra pixel below / right)."""
        rh, rw = _pair(self.resize)
        if self.aspect == "stretch":
            return 0, 0, rh, rw
        scale = min(rh / height, rw / width)
        h, w = (min(side, max(1, int(n * scale + 0.5))) for side, n in ((rh, height), (rw, width)))  # half rounds up
        return (rh - h) // 2, (rw - w) // 2, h, w

    def stretched_to(self) -> tuple[int, int] | None:
        """The (h, w) every image is stretched to ("stretch"); None with "pad", which never distorts."""
        return _pair(self.resize) if self.aspect == "stretch" else None

    def _geometry(self, im: Image.Image, resample: Image.Resampling) -> Image.Image:
        rh, rw = _pair(self.resize)
        top, left, h, w = self.content_box(im.height, im.width)
        if im.size != (w, h):
            im = im.resize((w, h), resample)
        if (h, w) != (rh, rw):  # letterbox: the scaled image centred on a constant canvas
            canvas = Image.new(im.mode, (rw, rh), PAD_VALUE if len(im.getbands()) == 1 else (PAD_VALUE,) * 3)
            canvas.paste(im, (left, top))
            im = canvas
        if self.crop is not None:
            ch, cw = _pair(self.crop)
            top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
            im = im.crop((left, top, left + cw, top + ch))
        return im

    def to_uint8_array(self, img: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> uint8 (3, H', W') numpy: the resized, cropped pixels (the one geometry rule)."""
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise DataError(f"Transform expects a uint8 (H, W, 3) image; got {got}")
        out = np.asarray(self._geometry(Image.fromarray(img), Image.Resampling.BILINEAR))  # (H', W', 3) uint8
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def to_uint8(self, img: np.ndarray) -> Any:
        """uint8 (H, W, 3) -> uint8 torch.Tensor (3, H', W') (4x smaller than float; ``to_uint8_array``)."""
        import torch

        return torch.from_numpy(self.to_uint8_array(img))

    def to_array(self, img: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (3, H', W') in [0, 1] (numpy), exactly ``to_uint8_array(img) / 255``: the
        one preprocessing function, used by ``__call__`` (torch) and by the ONNX runtime (no torch)."""
        return self.to_uint8_array(img).astype(np.float32) / np.float32(255.0)

    def __call__(self, img: np.ndarray) -> Any:
        """uint8 (H, W, 3) -> float32 torch.Tensor (3, H', W') in [0, 1] (``to_array`` as a tensor)."""
        import torch

        return torch.from_numpy(self.to_array(img))

    def mask_array(self, m: np.ndarray) -> np.ndarray:
        """bool (H, W) -> bool (H', W') numpy, nearest-neighbour so it stays binary."""
        if m.ndim != 2:
            raise DataError(f"Transform.mask expects a (H, W) mask; got shape {m.shape}")
        im = Image.fromarray((m != 0).astype(np.uint8) * 255)
        return np.asarray(self._geometry(im, Image.Resampling.NEAREST)) > 127

    def mask(self, m: np.ndarray) -> Any:
        """bool (H, W) -> bool torch.Tensor (H', W') (``mask_array`` as a tensor)."""
        import torch

        return torch.from_numpy(self.mask_array(m))

    def to_dict(self) -> dict[str, Any]:
        """{resize, crop} plus ``aspect`` unless it is "stretch": model files and run keys written before the
        option stay byte-identical (``from_dict`` reads a missing ``aspect`` as "stretch")."""
        conv = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
        d: dict[str, Any] = {"resize": conv(self.resize), "crop": conv(self.crop)}
        if self.aspect != "stretch":
            d["aspect"] = self.aspect
        return d

    def describe(self) -> dict[str, Any]:
        """Every field, the default aspect included (the model card)."""
        return {**self.to_dict(), "aspect": self.aspect}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Transform":
        if unknown := set(d) - {"resize", "crop", "aspect"}:
            raise ConfigError(f"unknown Transform keys {sorted(unknown)}; allowed: resize, crop, aspect")
        conv = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
        return cls(resize=conv(d.get("resize", 256)), crop=conv(d.get("crop")), aspect=d.get("aspect", "stretch"))


def preprocessing(paper: Transform | Mapping[str, Any], resize: int | None = None, crop: int | None = None,
                  aspect: str | None = None) -> Transform:
    """The one rule that turns user-given ``resize`` / ``crop`` / ``aspect`` into the Transform every command uses.

    ``paper`` is the method's paper preprocessing (``BaseDetector.paper_transform``). A value that is not
    given (None) is the paper's; ``crop=0`` means no crop. So ``resize=300`` alone keeps the paper crop,
    ``crop=200`` alone keeps the paper resize. ``resize`` must be an integer >= 1, ``crop`` an integer >= 0,
    and a crop larger than the resize is an error (ConfigError naming the allowed values). ``aspect``:
    "stretch" (the papers') or "pad" (letterbox, see the module docstring).
    """
    if not isinstance(paper, Transform):
        paper = Transform.from_dict(dict(paper))
    for name, v, low in (("resize", resize, 1), ("crop", crop, 0)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= _MAX_SIDE):
            zero = " (0 = no crop)" if name == "crop" else ""
            raise ConfigError(f"{name} must be an integer in [{low}, {_MAX_SIDE}]{zero} or unset for the paper "
                              f"setting ({getattr(paper, name)!r}); got {v!r}")
    if aspect is not None and aspect not in ASPECTS:
        raise ConfigError(f"aspect={aspect!r} is not allowed; allowed values: {', '.join(map(repr, ASPECTS))} "
                          f"or unset for the paper setting ({paper.aspect!r})")
    tf = Transform(resize=paper.resize if resize is None else int(resize),
                   crop=paper.crop if crop is None else (int(crop) or None),
                   aspect=paper.aspect if aspect is None else aspect)
    if tf.crop is not None and tf.resize is not None and (
            _pair(tf.crop)[0] > _pair(tf.resize)[0] or _pair(tf.crop)[1] > _pair(tf.resize)[1]):
        raise ConfigError(f"crop {tf.crop!r} must not exceed resize {tf.resize!r}; give a crop <= the resize, "
                          "or crop 0 for no crop")
    tf.validate()
    return tf
