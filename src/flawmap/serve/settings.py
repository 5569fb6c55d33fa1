"""Settings of ``flawmap serve``: one frozen record, passed to the app factory and to uvicorn workers."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError

#: environment variable holding the settings (JSON) of the worker processes of ``--workers N``
SETTINGS_ENV = "FLAWMAP_SERVE_SETTINGS"
#: environment variable read for the API key when ``--api-key`` is not given
API_KEY_ENV = "FLAWMAP_API_KEY"
#: environment variable read for the admin key when ``--admin-key`` is not given
ADMIN_KEY_ENV = "FLAWMAP_ADMIN_KEY"
#: which uploaded images the inspection log keeps (``--keep-images``)
KEEP_IMAGES = ("none", "anomalous", "all")


@dataclass(frozen=True)
class ServeSettings:
    """What the service needs besides the model.

    ``max_batch``: images per forward pass; ``max_wait_ms``: how long the first image of a batch waits
    for others; ``max_image_mb`` / ``max_pixels``: limits per image (encoded bytes / width * height);
    ``max_images``: images per request (the body limit follows from it); ``api_key``: None = open;
    ``shutdown_timeout_s``: how long in-flight requests may take after SIGTERM.

    On the line: ``log_dir``: the inspection log folder (None = no log); ``keep_images``: which uploads it
    keeps (``KEEP_IMAGES``); ``max_log_gb``: kept images beyond this are evicted oldest first (None = no
    limit); ``admin_key``: the key of labels and reloads (with only one of the two keys set, that key
    guards everything); ``drift_window``: images in the rolling drift window.
    """

    model: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    device: str | None = None
    max_batch: int = 8
    max_wait_ms: float = 2.0
    max_image_mb: float = 20.0
    max_pixels: int = 50_000_000
    max_images: int = 16
    api_key: str | None = None
    shutdown_timeout_s: float = 30.0
    log_dir: str | None = None
    keep_images: str = "anomalous"
    max_log_gb: float | None = None
    admin_key: str | None = None
    drift_window: int = 500

    def __post_init__(self) -> None:
        for name, low in (("port", 0), ("workers", 1), ("max_batch", 1), ("max_pixels", 1), ("max_images", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"serve: {name} must be an integer >= {low}; got {v!r}")
        for name in ("max_wait_ms", "max_image_mb", "shutdown_timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or (name == "max_image_mb" and v == 0):
                raise ConfigError(f"serve: {name} must be a number > 0 (max_wait_ms, shutdown_timeout_s: >= 0); got {v!r}")
        if self.api_key is not None and not self.api_key:
            raise ConfigError(f"serve: the API key must not be empty (unset {API_KEY_ENV} or give a key)")
        if self.admin_key is not None and not self.admin_key:
            raise ConfigError(f"serve: the admin key must not be empty (unset {ADMIN_KEY_ENV} or give a key)")
        if self.keep_images not in KEEP_IMAGES:
            raise ConfigError(f"serve: keep_images={self.keep_images!r} is not allowed; allowed values: "
                              f"{', '.join(KEEP_IMAGES)}")
        mg = self.max_log_gb
        if mg is not None and (isinstance(mg, bool) or not isinstance(mg, (int, float)) or not mg > 0):
            raise ConfigError(f"serve: max_log_gb must be a number > 0 (or unset: no limit); got {mg!r}")
        dw = self.drift_window
        if isinstance(dw, bool) or not isinstance(dw, int) or dw < 10:
            raise ConfigError(f"serve: drift_window must be an integer >= 10; got {dw!r}")

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: ``max_images`` images at the byte limit plus multipart overhead."""
        return self.max_images * (self.max_image_bytes + 64 * 2**10)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServeSettings:
        text = (os.environ if environ is None else environ).get(SETTINGS_ENV)
        if not text:
            raise ConfigError(f"serve: {SETTINGS_ENV} is not set (the worker processes read their settings from it)")
        d: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
