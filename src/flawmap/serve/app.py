"""The ASGI app of ``flawmap serve``: ``create_app(predictor, settings)``.

    POST /v1/predict   images (multipart fields ``file``, or raw bytes) -> one JSON record per image
                       (?heatmap=png: overlay panel as base64 PNG; ?map=npy: raw map as base64 .npy)
    GET  /v1/model     the model card (method, backbone, calibration, preprocessing, flawmap version)
    GET  /healthz      liveness (never needs the API key)      GET /readyz   the model is loaded
    GET  /             the web page (serve/page/index.html, self-contained)
    GET  /docs, /openapi.json   the OpenAPI schema (FastAPI)
    POST /v1/model/reload      load another model beside the served one and switch (admin key); SIGHUP too
    GET  /v1/inspections[/{id}[/image|/overlay]]   the inspection log (``--log DIR``, ``serve.inspections``)
    POST /v1/inspections/{id}/label                an operator's review (admin key)
    GET  /metrics      Prometheus text format (``serve.metrics``), drift over the last images (``serve.drift``)

Per image: decode + preprocess in a thread, the forward pass in the micro-batcher's thread
(``serve.batching``), decisions by ``predictor.decide`` (``deploy.predictor``: the one inference path).
Every error is ``{"error": "<one line>"}`` with a 4xx status for bad requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import sqlite3
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal

from fastapi import Body, FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import FlawmapError
from . import inspections as ilog
from .auth import ApiKeyMiddleware
from .batching import MicroBatcher, ShuttingDown
from .drift import DriftMonitor
from .metrics import ServeMetrics
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


@dataclass(eq=False)
class Served:
    """One loaded model: its predictor, batcher, identity and drift window. A request takes the one served
    when it starts and keeps it to its end (``inflight``), so a reload never changes a request's model."""

    predictor: Any
    batcher: MicroBatcher
    path: str
    drift: DriftMonitor
    inflight: int = 0
    loaded_at: float = field(default_factory=time.time)

    @property
    def model_id(self) -> str:
        return str(getattr(self.predictor, "model_id", "unknown"))

    @property
    def version(self) -> int:
        return int(getattr(self.predictor, "model_version", 1))


class _State:
    """The served model (None until loaded: /readyz says 503), the inspection log and the metrics."""

    def __init__(self) -> None:
        self.served: Served | None = None
        self.load_error: str | None = None
        self.log: ilog.InspectionLog | None = None
        self.metrics: ServeMetrics | None = None
        self.reload_lock: asyncio.Lock | None = None
        self.retiring: set[asyncio.Task] = set()

    @property
    def predictor(self) -> Any:
        return None if self.served is None else self.served.predictor

    @property
    def batcher(self) -> MicroBatcher | None:
        return None if self.served is None else self.served.batcher


# ---- response models of the routes of the line (inspection log, review, reload) ---------------------
class Inspection(BaseModel):
    """One scored image as the inspection log holds it."""

    id: int
    time: float = Field(description="unix seconds")
    request_id: str
    name: str
    image_sha256: str
    width: int
    height: int
    score: float
    normalized_score: float | None
    verdict: str = Field(description="ok, anomalous, or none (the model has no calibration)")
    threshold: float | None
    model_id: str
    model_version: int
    latency_ms: float
    batch_size: int
    key_id: str | None = Field(description="role and fingerprint of the key used (never the key)")
    label: str | None = Field(description="an operator's review: good (a false alarm when flagged) or defect")
    note: str | None
    labeled_by: str | None
    labeled_at: float | None
    image_kept: bool
    image_url: str | None = None
    overlay_url: str | None = None


class InspectionPage(BaseModel):
    items: list[Inspection]
    next_cursor: int | None = Field(description="pass as ?cursor= for the next (older) page; null: last page")


class LabelRequest(BaseModel):
    label: Literal["good", "defect"] = Field(description="good: the part is good (a false alarm if flagged); "
                                             "defect: the defect is confirmed")
    note: str | None = Field(None, max_length=ilog.MAX_NOTE)
    by: str | None = Field(None, max_length=64, description="who reviewed (shown with the key id)")


class ReloadRequest(BaseModel):
    path: str | None = Field(None, max_length=4096, description="model folder or .onnx file on the server "
                             "(default: the served path, e.g. after replacing it)")


class ReloadResult(BaseModel):
    model_id: str
    model_version: int
    method: str
    path: str
    previous_model_id: str | None
    seconds: float


def ilog_upload(data: bytes) -> Any:
    """A kept image as an upload (decoded by the same rules as a new one)."""
    from .uploads import Upload

    return Upload("kept", data)


def page_html() -> str:
    """The self-contained web page (package data)."""
    return resources.files(__package__).joinpath("page/index.html").read_text(encoding="utf-8")


def _open_path(settings: ServeSettings) -> Callable[[str], Any]:
    def open_path(path: str) -> Any:
        from ..deploy.predictor import open_predictor

        return open_predictor(path, device=settings.device)

    return open_path


def _sniff(data: bytes) -> str:
    """The media type of a kept upload from its first bytes."""
    for magic, mtype in ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"BM", "image/bmp"),
                         (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"), (b"RIFF", "image/webp")):
        if data.startswith(magic):
            return mtype
    return "application/octet-stream"


class _RequestCounter:
    """Pure ASGI middleware: ``flawmap_requests_total{route, status}`` (route: the matched path template)."""

    def __init__(self, app, metrics: Callable[[], ServeMetrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        finally:
            m = self.metrics()
            if m is not None:
                route = getattr(scope.get("route"), "path", None) or "other"
                m.requests.labels(route, str(status[0])).inc()


def create_app(predictor: Any | Callable[[], Any], settings: ServeSettings,
               opener: Callable[[str], Any] | None = None) -> FastAPI:
    """The app serving ``predictor`` (see ``deploy.predictor``), or a zero-argument function that opens it:
    then the model is loaded in the background once the server started (``/readyz`` is 503 until then).
    ``opener(path)`` opens the model of a reload (default: ``open_predictor`` on ``settings.device``)."""
    state = _State()
    page = page_html()
    opener = opener or _open_path(settings)

    def serve(pred: Any) -> Served:
        batcher = MicroBatcher(pred.raw, settings.max_batch, settings.max_wait_ms / 1e3)
        batcher.start()
        path = str(getattr(pred, "path", None) or settings.model)
        return Served(pred, batcher, path, DriftMonitor(getattr(pred, "calibration", None), settings.drift_window))

    def ready(pred: Any) -> None:
        state.served = serve(pred)

    async def load(loader: Callable[[], Any]) -> None:
        try:
            pred = await run_in_threadpool(loader)
            if state.served is not None:  # a reload finished first: it wins
                return
            ready(pred)
            log.info("model loaded: %s", state.predictor.method)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and /v1/predict
            state.load_error = f"{type(exc).__name__}: {exc}"
            log.error("cannot load the model: %s", state.load_error)

    async def retire(old: Served) -> None:
        """Stop a replaced model's batcher once its in-flight requests are done (at most the shutdown timeout)."""
        deadline = time.monotonic() + settings.shutdown_timeout_s
        while old.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await old.batcher.stop()

    async def reload_model(path: str | None) -> ReloadResult:
        """Open ``path`` beside the served model, then switch in one assignment; a failure changes nothing."""
        async with state.reload_lock:
            old = state.served
            target = path or (old.path if old is not None else settings.model)
            t0 = time.perf_counter()
            try:
                pred = await run_in_threadpool(opener, target)
            except Exception as exc:  # noqa: BLE001 - the reason goes back to the caller, the old model stays
                state.metrics.reloads.labels("failed").inc()
                still = f"; still serving {old.model_id}" if old is not None else ""
                log.error("reload of %s failed, the served model stays: %s", target, exc)
                raise UploadError(422, f"cannot load {target}: {type(exc).__name__}: {exc}{still}") from None
            new = serve(pred)
            state.served, state.load_error = new, None
            state.metrics.reloads.labels("ok").inc()
            if old is not None:
                task = asyncio.create_task(retire(old))
                state.retiring.add(task)
                task.add_done_callback(state.retiring.discard)
            log.info("serving %s (model %s, version %d) instead of %s", target, new.model_id, new.version,
                     old.model_id if old is not None else "nothing")
            return ReloadResult(model_id=new.model_id, model_version=new.version, method=str(pred.method),
                                path=target, previous_model_id=old.model_id if old is not None else None,
                                seconds=round(time.perf_counter() - t0, 3))

    def on_sighup() -> None:
        async def run() -> None:
            try:
                await reload_model(None)
            except UploadError:
                pass  # reload_model logged why; the served model stays

        asyncio.ensure_future(run())

    def metrics_state() -> dict[str, Any]:
        srv, lg = state.served, state.log
        out: dict[str, Any] = {"queue_depth": 0 if srv is None else srv.batcher.pending,
                               "log_lag": 0 if lg is None else lg.lag, "log_dropped": 0 if lg is None else lg.dropped,
                               "log_rows": 0 if lg is None else lg.logged}
        if srv is not None:
            out.update(model_id=srv.model_id, method=srv.predictor.method, version=srv.version,
                       drift=srv.drift.report())
        return out

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.reload_lock = asyncio.Lock()
        if settings.log_dir:
            max_bytes = None if settings.max_log_gb is None else int(settings.max_log_gb * 2**30)
            state.log = ilog.InspectionLog(settings.log_dir, keep_images=settings.keep_images,
                                           max_bytes=max_bytes).start()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
            hup = True
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):  # not the main thread
            hup = False
        loading = None
        if callable(predictor) and not hasattr(predictor, "raw"):
            loading = asyncio.create_task(load(predictor))
        else:
            ready(predictor)
        yield
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        if loading is not None:
            await loading
        for task in list(state.retiring):
            await task
        if state.batcher is not None:
            await state.batcher.stop()
        if state.log is not None:
            await run_in_threadpool(state.log.stop)

    app = FastAPI(title="flawmap", version=__version__, lifespan=lifespan,
                  description="Visual anomaly detection: score images with a fitted flawmap model.")
    app.state.flawmap = state
    state.metrics = ServeMetrics(metrics_state)
    if settings.api_key or settings.admin_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, admin_key=settings.admin_key)
    app.add_middleware(_RequestCounter, metrics=lambda: state.metrics)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(FlawmapError)
    async def _flawmap_error(request: Request, exc: FlawmapError) -> JSONResponse:
        return error(400, str(exc))

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
        return served().predictor

    def served() -> Served:
        srv = state.served
        if srv is None:
            raise UploadError(503, "the model is not loaded" + (f": {state.load_error}" if state.load_error else " yet"))
        return srv

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded", responses={503: {"description": "not loaded"}})
    async def readyz() -> dict[str, str]:
        loaded()
        return {"status": "ready"}

    @app.get("/v1/model", summary="The model card, the served model's id and its drift")
    async def model() -> dict[str, Any]:
        srv = served()
        pred = srv.predictor
        lg = state.log
        logged = None if lg is None else {"dir": str(lg.folder), "available": lg.available, "logged": lg.logged,
                                          "dropped": lg.dropped, "lag": lg.lag, "keep_images": lg.keep_images,
                                          "kept_bytes": lg.kept_bytes, "evicted": lg.evicted}
        return {**pred.card, "model_id": srv.model_id, "model_version": srv.version, "path": srv.path,
                "loaded_at": srv.loaded_at, "drift": srv.drift.report(), "log": logged,
                "server": {"flawmap_version": __version__, "device": getattr(pred, "device", None),
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
        srv = served()  # this request's model, to its end, even if a reload switches meanwhile
        srv.inflight += 1
        try:
            return await scored(request, srv, t0, heatmap, map_)
        finally:
            srv.inflight -= 1

    def _decode(u: Any) -> tuple[Any, str]:
        return decode_upload(u, settings), hashlib.sha256(u.data).hexdigest()

    async def scored(request: Request, srv: Served, t0: float, heatmap: str | None, map_: str | None) -> dict[str, Any]:
        pred, m = srv.predictor, state.metrics
        body = await read_body(request.stream(), request.headers.get("content-length"), settings.max_body_bytes)
        uploads = await parse_uploads(request.headers.get("content-type", ""), request.headers, body, settings)
        decoded = [await run_in_threadpool(_decode, u) for u in uploads]  # all valid, or a 4xx
        request_id = uuid.uuid4().hex
        key_id = getattr(request.state, "key_id", None)

        async def one(u: Any, img: Any, sha: str) -> dict[str, Any]:
            x = (await run_in_threadpool(pred.preprocess, [img]))[0]  # (3, H, W) float32
            try:
                res = await srv.batcher.submit(x)
            except ShuttingDown as exc:
                raise UploadError(503, str(exc)) from None
            verdict = pred.decide([res.score])[0]
            png = await run_in_threadpool(overlay_png, pred, x, res.map) if heatmap else None
            npy = npy_bytes(res.map) if map_ else None
            ms = (time.perf_counter() - t0) * 1e3
            rec = image_record(u.name, img.shape[:2], verdict, ms, res.batch_size, png, npy)
            word = rec["verdict"] or "none"
            m.images.labels(word, srv.model_id).inc()
            m.batch.labels(srv.model_id).observe(res.batch_size)
            srv.drift.add(verdict.score)
            if state.log is not None:
                state.log.record({"time": time.time(), "request_id": request_id, "name": u.name[:256],
                                  "image_sha256": sha, "width": rec["width"], "height": rec["height"],
                                  "score": verdict.score, "normalized_score": verdict.normalized_score,
                                  "verdict": word, "threshold": verdict.threshold, "model_id": srv.model_id,
                                  "model_version": srv.version, "latency_ms": ms, "batch_size": res.batch_size,
                                  "key_id": key_id}, u.data)
            return rec

        records = await asyncio.gather(*(one(u, img, sha) for u, (img, sha) in zip(uploads, decoded)))
        m.latency.labels(srv.model_id).observe(time.perf_counter() - t0)
        return {"results": list(records), "ms": round((time.perf_counter() - t0) * 1e3, 3),
                "request_id": request_id, "model_id": srv.model_id}

    # ---- the line: reload, metrics, the inspection log -----------------------------------------------
    @app.post("/v1/model/reload", summary="Load another model (or the served path again) and switch to it",
              response_model=ReloadResult, responses={422: {"description": "the model cannot be loaded; the "
                                                                          "served model stays"}})
    async def reload(body: ReloadRequest | None = Body(None)) -> ReloadResult:
        return await reload_model(body.path if body is not None else None)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        body = await run_in_threadpool(state.metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def log_dir() -> Path:
        if state.log is None:
            raise UploadError(404, "no inspection log: start the server with --log DIR")
        if not state.log.available:
            raise UploadError(503, f"the inspection log in {state.log.folder} cannot be opened (see the server log)")
        return state.log.folder

    async def read_log(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except sqlite3.Error as exc:
            raise UploadError(503, f"the inspection log cannot be read now: {exc}") from None

    def with_urls(rec: dict[str, Any]) -> Inspection:
        base = f"v1/inspections/{rec['id']}"
        kept = rec["image_kept"]
        return Inspection(**rec, image_url=f"{base}/image" if kept else None,
                          overlay_url=f"{base}/overlay" if kept else None)

    async def record_or_404(inspection_id: int) -> dict[str, Any]:
        rec = await read_log(ilog.get, log_dir(), inspection_id)
        if rec is None:
            raise UploadError(404, f"no inspection {inspection_id}")
        return rec

    _ID = PathParam(..., ge=1, le=2**62, description="inspection id")
    _404: dict[int | str, dict[str, Any]] = {404: {"description": "no such inspection, or no log"}}

    @app.get("/v1/inspections", summary="Inspections, newest first", response_model=InspectionPage)
    async def inspections(verdict: str | None = Query(None, description=f"one of {', '.join(ilog.VERDICTS)}"),
                          label: str | None = Query(None, description=f"one of {', '.join(ilog.LABEL_FILTERS)}"),
                          since: str | None = Query(None, description="unix seconds or ISO 8601"),
                          until: str | None = Query(None, description="unix seconds or ISO 8601 (exclusive)"),
                          model_id: str | None = None, request_id: str | None = None,
                          limit: int = Query(50, ge=1, le=ilog.MAX_PAGE),
                          cursor: int | None = Query(None, ge=1, le=2**62)) -> InspectionPage:
        q = ilog.Query(verdict=verdict, label=label, since=ilog.parse_time(since, "since"),
                       until=ilog.parse_time(until, "until"), model_id=model_id, request_id=request_id, limit=limit,
                       cursor=cursor)
        items, nxt = await read_log(ilog.query, log_dir(), q)
        return InspectionPage(items=[with_urls(r) for r in items], next_cursor=nxt)

    @app.get("/v1/inspections/{inspection_id}", summary="One inspection", response_model=Inspection, responses=_404)
    async def inspection(inspection_id: int = _ID) -> Inspection:
        return with_urls(await record_or_404(inspection_id))

    async def kept_image(inspection_id: int) -> bytes:
        rec = await record_or_404(inspection_id)
        path = ilog.image_path(log_dir(), rec["image_sha256"])  # by hash, under DIR only
        if not rec["image_kept"]:
            raise UploadError(404, f"inspection {inspection_id}: the image was not kept (--keep-images "
                                   f"{settings.keep_images}, or evicted by --max-log-gb)")
        try:
            return await run_in_threadpool(path.read_bytes)
        except OSError:
            raise UploadError(404, f"inspection {inspection_id}: the kept image is gone") from None

    @app.get("/v1/inspections/{inspection_id}/image", summary="The uploaded image, when kept", response_class=Response,
             responses={**_404, 200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}})
    async def inspection_image(inspection_id: int = _ID) -> Response:
        data = await kept_image(inspection_id)
        return Response(data, media_type=_sniff(data), headers={"x-content-type-options": "nosniff",
                                                                "cache-control": "private, max-age=3600"})

    @app.get("/v1/inspections/{inspection_id}/overlay", summary="Image | anomaly map | overlay (PNG) of a kept "
             "image, drawn by the served model", response_class=Response,
             responses={**_404, 200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}})
    async def inspection_overlay(inspection_id: int = _ID) -> Response:
        data = await kept_image(inspection_id)
        srv = served()
        srv.inflight += 1
        try:
            img, _ = await run_in_threadpool(_decode, ilog_upload(data))
            x = (await run_in_threadpool(srv.predictor.preprocess, [img]))[0]
            try:
                res = await srv.batcher.submit(x)
            except ShuttingDown as exc:
                raise UploadError(503, str(exc)) from None
            png = await run_in_threadpool(overlay_png, srv.predictor, x, res.map)
        finally:
            srv.inflight -= 1
        return Response(png, media_type="image/png", headers={"x-flawmap-model-id": srv.model_id})

    @app.post("/v1/inspections/{inspection_id}/label", summary="Record an operator's review", response_model=Inspection,
              responses=_404)
    async def label(request: Request, body: LabelRequest, inspection_id: int = _ID) -> Inspection:
        who = "; ".join(v for v in (body.by, getattr(request.state, "key_id", None)) if v) or None
        rec = await read_log(ilog.set_label, log_dir(), inspection_id, body.label, body.note, who)
        if rec is None:
            raise UploadError(404, f"no inspection {inspection_id}")
        return with_urls(rec)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app
