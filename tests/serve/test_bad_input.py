"""Bad uploads: each gets a 4xx with a one-line JSON error naming the problem, never a 500, and the server
keeps serving."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import png

LIMITS = dict(max_image_mb=0.25, max_pixels=300 * 300, max_images=3)
RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, (400, 400, 3), dtype=np.uint8)  # ~470 KB as PNG: over 0.25 MB


@pytest.fixture
def server(live_server):
    return live_server(**LIMITS)


def _post(url: str, query: str = "", **kw) -> httpx.Response:
    return httpx.post(url + "/v1/predict" + query, timeout=30, **kw)


def _check(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    msg = r.json()["error"]
    assert isinstance(msg, str) and "\n" not in msg and msg
    for w in words:
        assert w in msg, (w, msg)


def _good(served_model) -> tuple[str, bytes, str]:
    return (served_model.good[0].name, served_model.good[0].read_bytes(), "image/png")


def _still_serving(url: str, served_model) -> None:
    r = _post(url, files=[("file", _good(served_model))])
    assert r.status_code == 200 and r.json()["results"][0]["verdict"] == "ok"


def test_bad_files_in_multipart(server, served_model) -> None:
    good_png = served_model.good[0].read_bytes()
    small = np.full((100, 100, 3), 128, np.uint8)
    cases = [
        ("notes.png", b"this is not an image at all", "image/png", 400, ("notes.png", "not a valid or complete image")),
        ("cut.png", good_png[: len(good_png) // 2], "image/png", 400, ("cut.png", "not a valid or complete image")),
        ("empty.png", b"", "image/png", 400, ("empty.png", "empty (0 bytes)")),
        ("big.png", png(NOISE), "image/png", 413, ("big.png", "over the limit", "--max-image-mb")),
        ("wide.png", png(np.zeros((100, 1000, 3), np.uint8)), "image/png", 413, ("wide.png", "1000x100", "--max-pixels")),
        ("tiny.png", png(np.zeros((8, 8, 3), np.uint8)), "image/png", 400, ("tiny.png", "at least 16 px")),
        ("doc.txt", png(small), "text/plain", 415, ("doc.txt", "text/plain", "not an image")),
    ]
    for name, data, ctype, status, words in cases:
        _check(_post(server.url, files=[("file", _good(served_model)), ("file", (name, data, ctype))]), status, *words)
    _still_serving(server.url, served_model)


def test_bad_requests(server, served_model) -> None:
    good = served_model.good[0].read_bytes()
    _check(_post(server.url, content=good, headers={"content-type": "text/plain"}), 415, "text/plain", "multipart/form-data")
    _check(_post(server.url, content=good), 415, "(none)")
    _check(_post(server.url, content=b"", headers={"content-type": "image/png"}), 400, "body", "empty")
    _check(_post(server.url, data={"other": "x"}, files=[("file", _good(served_model))]), 400, "'other'")
    _check(_post(server.url, files={"file": (None, "x")}), 400, "'file'")  # a text field, no file
    _check(_post(server.url, data={"file": "x"}), 415, "x-www-form-urlencoded")
    _check(_post(server.url, files=[("image", _good(served_model))]), 400, "'image'", "'file'")
    _check(_post(server.url, files=[("file", _good(served_model))] * 4), 400, "at most 3 images")
    _check(_post(server.url, "?heatmap=jpeg", content=good, headers={"content-type": "image/png"}), 400, "heatmap", "png")
    _check(_post(server.url, "?map=csv", content=good, headers={"content-type": "image/png"}), 400, "map", "npy")
    _check(_post(server.url, content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}), 400)
    _check(httpx.get(server.url + "/v1/predict"), 405)
    _check(httpx.get(server.url + "/nothing"), 404, "/nothing")
    _still_serving(server.url, served_model)


def test_huge_bodies(server, served_model) -> None:
    limit = 3 * (int(0.25 * 2**20) + 64 * 2**10)
    big = RNG.integers(0, 256, limit + 2**20, dtype=np.uint8).tobytes()
    # announced by Content-Length
    _check(_post(server.url, files=[("file", ("a.png", big, "image/png"))]), 413, "request body", "over the limit")
    # streamed without a length (chunked transfer encoding)
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    _check(_post(server.url, content=chunks, headers={"content-type": "image/png"}), 413, "request body")
    _still_serving(server.url, served_model)


def test_decoder_refuses_a_pixel_bomb_before_decoding(server, served_model) -> None:
    """A 6000 x 6000 PNG of a few KB: refused from its header (--max-pixels), not decoded."""
    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 2**17
    _check(_post(server.url, files=[("file", ("bomb.png", buf.getvalue(), "image/png"))]), 413, "bomb.png", "6000x6000")
    _still_serving(server.url, served_model)
