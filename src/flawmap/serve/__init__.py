"""``flawmap serve``: an HTTP service (FastAPI + uvicorn) around one predictor (``flawmap.deploy.predictor``).

``create_app(predictor, settings)`` builds the ASGI app (``serve.app``); ``run_server(settings)`` runs it
with uvicorn (``serve.server``). Needs the ``serve`` extra (fastapi, uvicorn, python-multipart).
"""

from __future__ import annotations

from .settings import ServeSettings

__all__ = ["ServeSettings"]
