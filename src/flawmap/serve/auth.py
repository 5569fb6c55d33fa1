"""Optional keys: every path but ``/healthz`` needs one, compared in constant time.

Two keys: the API key (score images, read the log, the model card, metrics) and the admin key (label
inspections, reload the model: ``ADMIN_ROUTES``). With both set, admin routes need the admin key and every
other route takes either; with only one set, that key guards everything. The request's key id (the key's
role and the first 8 hex digits of its SHA-256, never the key) is put in ``request.state.key_id`` for the
inspection log.

Accepted as ``X-API-Key: KEY``, ``Authorization: Bearer KEY`` or HTTP Basic with KEY as the password
(so that a browser asks for it on the page and sends it with the page's requests by itself).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re

OPEN_PATHS = ("/healthz",)
#: (method, path pattern) of the routes that need the admin key when both keys are set
ADMIN_ROUTES = (("POST", re.compile(r"/v1/model/reload")), ("POST", re.compile(r"/v1/inspections/[^/]+/label")))


def key_id(role: str, key: str) -> str:
    """What the log records of a key: its role and a fingerprint (``api:1a2b3c4d``), never the key."""
    return f"{role}:{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def is_admin_route(method: str, path: str) -> bool:
    return any(method == m and rx.fullmatch(path) for m, rx in ADMIN_ROUTES)


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
    """Pure ASGI middleware: 401 with a one-line JSON error unless the request carries a key its route
    accepts (see the module doc); at least one of ``api_key`` / ``admin_key`` is set."""

    def __init__(self, app, api_key: str | None, admin_key: str | None = None) -> None:
        self.app = app
        self.keys = [(role, k.encode(), key_id(role, k)) for role, k in (("admin", admin_key), ("api", api_key)) if k]
        self.split = api_key is not None and admin_key is not None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        admin = self.split and is_admin_route(scope["method"], scope["path"])
        headers = dict(scope["headers"])
        for role, key, kid in self.keys:
            if (role == "admin" or not admin) and key_matches(key, headers):
                scope.setdefault("state", {})["key_id"] = kid
                await self.app(scope, receive, send)
                return
        what = "admin key" if admin else "API key"
        body = json.dumps({"error": f"missing or wrong {what}: send it as the X-API-Key header (or "
                                    "Authorization: Bearer KEY)"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Basic realm="flawmap", charset="UTF-8"')]})
        await send({"type": "http.response.body", "body": body})
