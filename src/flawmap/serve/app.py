"""The ASGI app of ``flawmap serve``: ``create_app(predictor, settings)``.

    POST /v1/predict   images (multipart fields ``file``, or raw bytes) -> one JSON record per image
                       (?heatmap=png: overlay panel as base64 PNG; ?map=npy: raw map as base64 .npy)
    GET  /v1/model     the model card (method, backbone, calibration, preprocessing, flawmap version)
    GET  /healthz      liveness (never needs the API key)      GET /readyz   the model is loaded
    GET  /             the web page (serve/page/index.html, self-contained)
    GET  /docs, /openapi.json   the OpenAPI schema (FastAPI)

Per image: decode + preprocess in a thread, the forward pass in the micro-batcher's thread
(``serve.batching``), decisions by ``predictor.decide`` (``deploy.predictor``: the one inference path).
Every error is ``{"error": "<one line>"}`` with a 4xx status for bad requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Callable

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .auth import ApiKeyMiddleware
from .batching import MicroBatcher, ShuttingDown
from .results import HEATMAP_CHOICES, MAP_CHOICES, image_record, npy_bytes, overlay_png
from .settings import ServeSettings
from .uploads import FIELD, UploadError, decode_upload, parse_uploads, read_body

log = logging.getLogger(__name__)

_PREDICT_BODY = {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": [FIELD], "properties": {
        FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}, "required": True}


def error(status: int, message: str) -> JSONResponse:
    """The one error shape: ``{"error": "<one line>"}``."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


class _State:
    """The loaded predictor and its batcher (None until loaded: /readyz says 503)."""

    def __init__(self) -> None:
        self.predictor: Any = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None


def page_html() -> str:
    """The self-contained web page (package data)."""
    return resources.files(__package__).joinpath("page/index.html").read_text(encoding="utf-8")


def create_app(predictor: Any | Callable[[], Any], settings: ServeSettings) -> FastAPI:
    """The app serving ``predictor`` (see ``deploy.predictor``), or a zero-argument function that opens it:
    then the model is loaded in the background once the server started (``/readyz`` is 503 until then)."""
    state = _State()
    page = page_html()

    def ready(pred: Any) -> None:
        state.predictor = pred
        state.batcher = MicroBatcher(pred.raw, settings.max_batch, settings.max_wait_ms / 1e3)
        state.batcher.start()

    async def load(loader: Callable[[], Any]) -> None:
        try:
            ready(await run_in_threadpool(loader))
            log.info("model loaded: %s", state.predictor.method)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and /v1/predict
            state.load_error = f"{type(exc).__name__}: {exc}"
            log.error("cannot load the model: %s", state.load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = None
        if callable(predictor) and not hasattr(predictor, "raw"):
            loading = asyncio.create_task(load(predictor))
        else:
            ready(predictor)
        yield
        if loading is not None:
            await loading
        if state.batcher is not None:
            await state.batcher.stop()

    app = FastAPI(title="flawmap", version=__version__, lifespan=lifespan,
                  description="Visual anomaly detection: score images with a fitted flawmap model.")
    app.state.flawmap = state
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return error(400, f"invalid request: {'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', exc)}")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    def loaded() -> Any:
        if state.predictor is None:
            raise UploadError(503, "the model is not loaded" + (f": {state.load_error}" if state.load_error else " yet"))
        return state.predictor

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded", responses={503: {"description": "not loaded"}})
    async def readyz() -> dict[str, str]:
        loaded()
        return {"status": "ready"}

    @app.get("/v1/model", summary="The model card")
    async def model() -> dict[str, Any]:
        pred = loaded()
        return {**pred.card, "server": {"flawmap_version": __version__, "device": getattr(pred, "device", None),
                                        "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                                        "max_image_mb": settings.max_image_mb, "max_pixels": settings.max_pixels,
                                        "max_images": settings.max_images, "batches": state.batcher.batches,
                                        "images": state.batcher.images}}

    @app.post("/v1/predict", summary="Score images", openapi_extra={"requestBody": _PREDICT_BODY})
    async def predict(request: Request, heatmap: str | None = None,
                      map_: str | None = Query(None, alias="map")) -> dict[str, Any]:
        t0 = time.perf_counter()
        if heatmap is not None and heatmap not in HEATMAP_CHOICES:
            raise UploadError(400, f"heatmap={heatmap!r}: allowed values: {', '.join(HEATMAP_CHOICES)}")
        if map_ is not None and map_ not in MAP_CHOICES:
            raise UploadError(400, f"map={map_!r}: allowed values: {', '.join(MAP_CHOICES)}")
        pred = loaded()
        body = await read_body(request.stream(), request.headers.get("content-length"), settings.max_body_bytes)
        uploads = await parse_uploads(request.headers.get("content-type", ""), request.headers, body, settings)
        images = [await run_in_threadpool(decode_upload, u, settings) for u in uploads]  # all valid, or a 4xx

        async def one(name: str, img: Any) -> dict[str, Any]:
            x = (await run_in_threadpool(pred.preprocess, [img]))[0]  # (3, H, W) float32
            try:
                res = await state.batcher.submit(x)
            except ShuttingDown as exc:
                raise UploadError(503, str(exc)) from None
            verdict = pred.decide([res.score])[0]
            png = await run_in_threadpool(overlay_png, pred, x, res.map) if heatmap else None
            npy = npy_bytes(res.map) if map_ else None
            return image_record(name, img.shape[:2], verdict, (time.perf_counter() - t0) * 1e3, res.batch_size, png, npy)

        records = await asyncio.gather(*(one(u.name, img) for u, img in zip(uploads, images)))
        return {"results": list(records), "ms": round((time.perf_counter() - t0) * 1e3, 3)}

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app
