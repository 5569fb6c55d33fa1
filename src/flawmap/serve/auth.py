"""Optional API key: every path but ``/healthz`` needs it, compared in constant time.

Accepted as ``X-API-Key: KEY``, ``Authorization: Bearer KEY`` or HTTP Basic with KEY as the password
(so that a browser asks for it on the page and sends it with the page's requests by itself).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json

OPEN_PATHS = ("/healthz",)


def presented_keys(headers: dict[bytes, bytes]) -> list[bytes]:
    """The keys a request presents (raw ASGI headers, lower-case names)."""
    keys = []
    if b"x-api-key" in headers:
        keys.append(headers[b"x-api-key"].strip())
    scheme, _, value = headers.get(b"authorization", b"").strip().partition(b" ")
    if scheme.lower() == b"bearer":
        keys.append(value.strip())
    elif scheme.lower() == b"basic":
        try:
            keys.append(base64.b64decode(value.strip(), validate=True).partition(b":")[2])
        except (binascii.Error, ValueError):
            pass
    return keys


def key_matches(expected: bytes, headers: dict[bytes, bytes]) -> bool:
    """Whether any presented key equals ``expected`` (``hmac.compare_digest``: time independent of where
    they differ)."""
    ok = False
    for k in presented_keys(headers):
        ok |= hmac.compare_digest(k, expected)
    return ok


class ApiKeyMiddleware:
    """Pure ASGI middleware: 401 with a one-line JSON error unless the request carries the key."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if key_matches(self.key, dict(scope["headers"])):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "missing or wrong API key: send it as the X-API-Key header (or "
                                    "Authorization: Bearer KEY)"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Basic realm="flawmap", charset="UTF-8"')]})
        await send({"type": "http.response.body", "body": body})
