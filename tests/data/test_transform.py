"""Transform geometry: aspect "stretch" (the papers') and "pad" (letterbox), images and masks, odd sizes,
square inputs unchanged, the saved form (old model files without `aspect` read as stretch)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from flawmap.data import Transform, load_images
from flawmap.data.transform import PAD_VALUE
from flawmap.errors import ConfigError


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 255, (h, w, 3), dtype=np.uint8)  # never the pad value


def _resized(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """(3, h, w): the image resized as the Transform resizes (PIL antialiased bilinear)."""
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


@pytest.mark.parametrize("h,w,resize,box", [
    (40, 80, 64, (16, 0, 32, 64)),  # wide: padded above and below
    (512, 256, 256, (0, 64, 256, 128)),  # tall 1:2 (synthetic-hard tall_part): padded left and right
    (51, 100, 64, (15, 0, 33, 64)),  # odd: 51 * 0.64 = 32.64 -> 33 rows; the extra margin row goes below
    (100, 37, (50, 40), (0, 10, 50, 19)),  # an (h, w) box: 37 / 2 = 18.5 -> 19 (half rounds up)
])
def test_letterbox_image_and_mask(h, w, resize, box) -> None:
    tf = Transform(resize, None, "pad")
    top, left, ch, cw = box
    assert tf.content_box(h, w) == box
    img = _image(h, w)
    out = tf.to_uint8_array(img)
    rh, rw = tf.output_size
    assert out.shape == (3, rh, rw)
    np.testing.assert_array_equal(out[:, top:top + ch, left:left + cw], _resized(img, ch, cw))
    inside = np.zeros((rh, rw), bool)
    inside[top:top + ch, left:left + cw] = True
    assert (out[:, ~inside] == PAD_VALUE).all()  # the margins are the constant, nothing else is
    assert (out[:, inside] != PAD_VALUE).all()
    np.testing.assert_array_equal(tf.mask_array(np.ones((h, w), bool)), inside)  # masks padded with False
    m = np.zeros((h, w), bool)
    m[: h // 2] = True  # the top half is defect
    got = tf.mask_array(m)
    assert not got[~inside].any() and got[top:top + ch // 2 - 1, left:left + cw].all()
    np.testing.assert_array_equal(tf.to_array(img), out.astype(np.float32) / 255)  # the one geometry rule


@pytest.mark.parametrize("h,w,resize", [(300, 300, 256), (64, 64, 64), (100, 200, (64, 128)), (33, 33, 16)])
def test_input_of_the_box_aspect_is_exactly_the_stretch(h, w, resize) -> None:
    img = _image(h, w, 1)
    pad, stretch = Transform(resize, None, "pad"), Transform(resize)
    np.testing.assert_array_equal(pad.to_uint8_array(img), stretch.to_uint8_array(img))
    m = np.random.default_rng(2).random((h, w)) > 0.7
    np.testing.assert_array_equal(pad.mask_array(m), stretch.mask_array(m))


def test_crop_applies_to_the_letterboxed_canvas() -> None:
    img = _image(128, 256)  # 1:2 -> content rows 64..192 of the 256 box
    out = Transform(256, 224, "pad").to_uint8_array(img)
    assert out.shape == (3, 224, 224)
    full = Transform(256, None, "pad").to_uint8_array(img)
    np.testing.assert_array_equal(out, full[:, 16:240, 16:240])


def test_stretch_is_unchanged() -> None:
    img = _image(40, 80)
    np.testing.assert_array_equal(Transform(64).to_uint8_array(img), _resized(img, 64, 64))
    assert Transform(64).content_box(40, 80) == (0, 0, 64, 64)
    assert Transform(64).stretched_to() == (64, 64) and Transform(64, None, "pad").stretched_to() is None


def test_saved_form_and_old_files() -> None:
    assert Transform(256, 224).to_dict() == {"resize": 256, "crop": 224}  # what models saved before the option hold
    assert Transform.from_dict({"resize": 256, "crop": 224}) == Transform(256, 224, "stretch")
    pad = Transform((256, 128), None, "pad")
    assert pad.to_dict() == {"resize": [256, 128], "crop": None, "aspect": "pad"}
    assert Transform.from_dict(pad.to_dict()) == pad
    assert Transform(64).describe() == {"resize": 64, "crop": None, "aspect": "stretch"}
    with pytest.raises(ConfigError, match="allowed: resize, crop, aspect"):
        Transform.from_dict({"resize": 64, "mode": "pad"})
    with pytest.raises(ConfigError, match="aspect='fit' is not allowed; allowed values: 'stretch', 'pad'"):
        Transform(64, None, "fit").validate()


def test_pad_does_not_warn_about_distortion(tmp_path, caplog) -> None:
    path = tmp_path / "strip.png"
    Image.fromarray(_image(40, 160)).save(path)  # 1:4, beyond the 2x distortion warning
    with caplog.at_level(logging.WARNING, logger="flawmap"):
        images, _, _, _ = load_images([path], Transform(64, None, "pad"), workers=1)
    assert images.shape == (1, 3, 64, 64) and "stretched" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="flawmap"):
        load_images([path], Transform(64), workers=1)
    assert "stretched" in caplog.text
