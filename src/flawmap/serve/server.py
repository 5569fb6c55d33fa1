"""Run the app with uvicorn: one process, or ``workers`` processes that each load the model once.

uvicorn handles SIGTERM / SIGINT gracefully: it stops listening (new connections are refused), lets
in-flight requests finish (up to ``shutdown_timeout_s``), then the app stops its batcher.
"""

from __future__ import annotations

import logging
from typing import Any

from .settings import SETTINGS_ENV, ServeSettings

log = logging.getLogger(__name__)


def open_model(settings: ServeSettings) -> Any:
    """The predictor of ``settings.model`` (a model folder or an exported .onnx) on ``settings.device``."""
    from ..deploy.predictor import open_predictor

    return open_predictor(settings.model, device=settings.device)


def app_from_env():
    """ASGI app factory of the worker processes (``uvicorn ... --factory``): settings from
    $FLAWMAP_SERVE_SETTINGS; the model is loaded in the background (``/readyz`` tells when)."""
    from .app import create_app

    settings = ServeSettings.from_env()
    return create_app(lambda: open_model(settings), settings)


def run_server(settings: ServeSettings, predictor: Any = None) -> None:
    """Serve until SIGTERM / SIGINT. With ``workers == 1`` the given (or freshly opened) predictor is
    served by this process; with more, each worker process opens the model itself."""
    import os

    import uvicorn

    common: dict[str, Any] = dict(host=settings.host, port=settings.port, log_level="info",
                                  timeout_graceful_shutdown=settings.shutdown_timeout_s)
    if settings.workers == 1:
        from .app import create_app

        app = create_app(predictor if predictor is not None else open_model(settings), settings)
        uvicorn.run(app, **common)
        return
    os.environ[SETTINGS_ENV] = settings.to_env()  # inherited by the worker processes
    uvicorn.run("flawmap.serve.server:app_from_env", factory=True, workers=settings.workers, **common)
