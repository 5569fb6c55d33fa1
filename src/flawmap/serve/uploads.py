"""Uploads of ``POST /v1/predict``: body limits, multipart or raw bytes, image decoding, one-line errors.

Every refusal is an ``UploadError`` with an HTTP status (4xx) and one line naming the problem; the app
turns it into ``{"error": "..."}``. Decoding is ``flawmap.data.images.decode_image`` (the rules of every
other flawmap command).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncGenerator, AsyncIterator

import numpy as np

from ..data.images import ImageTooLargeError, check_image_size, decode_image
from ..errors import DataError
from .settings import ServeSettings

#: content types of a raw-body upload, and of a multipart part (browsers send octet-stream for unknown files)
RAW_TYPES = ("image/", "application/octet-stream")
FIELD = "file"


class UploadError(Exception):
    """A refused upload: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upload:
    """One uploaded image, still encoded."""

    name: str
    data: bytes


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def _is_raw_type(ctype: str) -> bool:
    return any(ctype.startswith(t) for t in RAW_TYPES)


async def read_body(stream: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The request body, refused (413) beyond ``limit`` bytes, announced (Content-Length) or streamed.
    A too large body is still read to its end, up to 4x the limit, so that the client gets the 413 reply
    instead of a reset connection."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadError(400, f"invalid Content-Length header {content_length!r}") from None
    else:
        declared = 0
    chunks, size, over = [], 0, declared > limit
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            over = True
        if over:
            if size > 4 * limit:
                break
            continue
        chunks.append(chunk)
    if over:
        raise UploadError(413, f"request body of {_mb(max(size, declared))} is over the limit of {_mb(limit)} "
                               "(--max-images x --max-image-mb)")
    return b"".join(chunks)


async def parse_uploads(content_type: str, headers, body: bytes, settings: ServeSettings) -> list[Upload]:
    """Images of a request: multipart fields named ``file``, or the raw body (``image/*`` or
    ``application/octet-stream``). ``headers`` are the request headers (for the multipart boundary)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        uploads = await _parse_multipart(headers, body, settings)
    elif _is_raw_type(ctype):
        uploads = [Upload("body", body)]
    else:
        raise UploadError(415, f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data with "
                               f"fields named {FIELD!r}, or the image bytes as image/* or application/octet-stream")
    for u in uploads:
        if len(u.data) > settings.max_image_bytes:
            raise UploadError(413, f"image {u.name} is {_mb(len(u.data))}, over the limit of "
                                   f"{_mb(settings.max_image_bytes)} (--max-image-mb)")
    return uploads


async def _parse_multipart(headers, body: bytes, settings: ServeSettings) -> list[Upload]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    try:
        form = await MultiPartParser(headers, stream(), max_files=settings.max_images, max_fields=8).parse()
    except MultiPartException as exc:
        raise UploadError(400, f"invalid multipart body: {exc} (at most {settings.max_images} images per request, "
                               "--max-images)") from None
    try:
        uploads: list[Upload] = []
        for key, value in form.multi_items():
            if key != FIELD or not isinstance(value, UploadFile):
                raise UploadError(400, f"unexpected form field {key!r}: send images as files in fields named {FIELD!r}")
            ctype = (value.content_type or "application/octet-stream").split(";")[0].strip().lower()
            name = value.filename or f"{FIELD}{len(uploads)}"
            if not _is_raw_type(ctype):
                raise UploadError(415, f"file {name}: content type {ctype!r} is not an image (image/* or "
                                       "application/octet-stream)")
            uploads.append(Upload(name, await value.read()))
    finally:
        await form.close()
    if not uploads:
        raise UploadError(400, f"no image in the request: send files in multipart fields named {FIELD!r}")
    return uploads


def decode_upload(upload: Upload, settings: ServeSettings) -> np.ndarray:
    """Encoded upload -> RGB uint8 (H, W, 3); 400 for undecodable data, 413 over ``max_pixels``."""
    try:
        return check_image_size(decode_image(upload.data, upload.name, settings.max_pixels), upload.name)
    except ImageTooLargeError as exc:
        raise UploadError(413, f"{exc} (--max-pixels)") from None
    except DataError as exc:
        raise UploadError(400, str(exc)) from None
