"""The REST API: :func:`create_app` builds a FastAPI application around one loaded
:class:`~fracdet.inference.Predictor` (the model is loaded once, by the caller).

Routes (all but ``/v1/health`` need the ``X-API-Key`` header when a key is set):

- ``POST /v1/predict`` — one or more files as multipart field ``files`` (JPEG, PNG, TIFF, BMP,
  DICOM); per image: probability, label, verdict, thresholds, the model's fracture boxes
  (``[x0, y0, x1, y1, score]`` in original pixels; null for a model without a map or box head),
  model name + SHA-256, DICOM UIDs, the record id; a study verdict when several views share a StudyInstanceUID;
  ``?heatmap=true`` adds the overlay PNG (base64; needs PyTorch) and ``heatmap_box``, where the
  heatmap points (x, y, width, height in the image's pixels; derived, not a detected fracture).
- ``GET /v1/health`` — liveness; ``GET /v1/model`` — the model card's facts;
  ``POST /v1/feedback`` — a reader's verdict on a recorded prediction.

Uploads are checked before anything is decoded (see :mod:`fracdet.serve.uploads`); errors
are JSON ``{"error": {"status", "code", "message"}}``. Inference runs in a pool of worker
threads, never on the event loop; one access-log line per request (``fracdet.serve.access``),
without image content.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator

from fastapi import Depends, FastAPI, File, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fracdet import __version__
from fracdet.errors import FracdetError, ImageReadError
from fracdet.serve.errors import ApiError, error_body
from fracdet.serve.records import RecordStore, open_store, prediction_row
from fracdet.serve.settings import Settings
from fracdet.serve.uploads import Upload, UploadFolder, check_header

log = logging.getLogger("fracdet.serve")
access_log = logging.getLogger("fracdet.serve.access")
API_KEY_HEADER = "X-API-Key"
RESEARCH_NOTE = "Research use only: not a medical device; not for diagnosis, treatment or triage."
_BODY_SLACK = 64 * 1024  # multipart framing around the files


class Feedback(BaseModel):
    """A reader's verdict on one recorded prediction."""

    prediction_id: int = Field(description="the `id` a prediction was answered with")
    verdict: str = Field(description="'fracture' or 'no fracture' (also 'fractured' / 'not fractured')")
    reader: str | None = Field(default=None, max_length=128, description="who read it (optional)")
    comment: str | None = Field(default=None, max_length=2000)


def _key_ok(given: str | None, key: str | None) -> bool:
    return key is None or hmac.compare_digest((given or "").encode(), key.encode())


KEY_MESSAGE = f"missing or wrong API key (send it as the {API_KEY_HEADER} header)"


class _Guard:
    """ASGI middleware: refuses a missing or wrong API key on ``/v1/`` routes but health (401)
    and request bodies over the limit (413) before the body is read (or while it is), and
    writes one access-log line per request (no body content)."""

    def __init__(self, app: Any, limit: int, api_key: str | None = None) -> None:
        self.app = app
        self.limit = limit
        self.api_key = api_key

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = {"status": 0, "in": 0, "out": 0}
        limit = self.limit + _BODY_SLACK

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                state["out"] += len(message.get("body", b""))
            await send(message)

        async def receiving() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                state["in"] += len(message.get("body", b""))
                if state["in"] > limit:
                    raise ApiError(413, f"request body too large (the limit is {self.limit / 2**20:.1f} MiB)")
            return message

        try:
            headers = dict(scope.get("headers") or [])
            length = headers.get(b"content-length")
            path = scope.get("path", "")
            given = headers.get(API_KEY_HEADER.lower().encode(), b"").decode("latin-1")
            if path.startswith("/v1/") and path != "/v1/health" and not _key_ok(given, self.api_key):
                await JSONResponse(error_body(401, KEY_MESSAGE), status_code=401)(scope, receive, sending)
            elif length is not None and length.isdigit() and int(length) > limit:
                state["in"] = int(length)
                await JSONResponse(error_body(413, f"request body too large ({int(length) / 2**20:.1f} MiB; "
                                                   f"the limit is {self.limit / 2**20:.1f} MiB)"),
                                   status_code=413)(scope, receive, sending)
            else:
                await self.app(scope, receiving, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            query = scope.get("query_string", b"").decode("latin-1")
            target = scope.get("path", "") + (f"?{query}" if query else "")
            access_log.info('%s "%s %s" %s in=%dB out=%dB %.1fms', client[0], scope.get("method"), target,
                            state["status"] or "-", state["in"], state["out"],
                            (time.perf_counter() - start) * 1000)


def _finite(value: Any) -> Any:
    """JSON-safe: NaN/inf → None, recursively; numpy scalars → Python numbers; other → str."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):
        return _finite(value.item())
    return str(value)


def model_info(predictor: Any, settings: Settings) -> dict[str, Any]:
    """What ``GET /v1/model`` answers: the artifact's description (architecture, data summary,
    metrics with confidence intervals, operating points), its name, SHA-256 and backend."""
    art = predictor.artifact
    d = art.describe()
    d.pop("training", None)
    ops = {"threshold": art.threshold, "threshold_rule": art.threshold_rule,
           "doubt_threshold": art.doubt_threshold, "fracture_threshold": art.fracture_threshold,
           "temperature": art.temperature, "note": art.threshold_note}
    return _finite({"name": settings.model_name, "sha256": art.sha256, "backend": predictor.backend,
                    "fracdet_version": __version__, "operating_points": ops, **d, "notice": RESEARCH_NOTE})


class _Service:
    """The work behind the routes, run in worker threads."""

    def __init__(self, predictor: Any, settings: Settings, store: RecordStore | None) -> None:
        self.predictor = predictor
        self.settings = settings
        self.store = store
        self.heatmap_lock = threading.Lock()  # the PyTorch CAM path is not shared between threads
        art = predictor.artifact
        self.model = {"name": settings.model_name, "sha256": art.sha256}
        self.thresholds = {"label": art.threshold, "doubt": art.doubt_threshold, "fracture": art.fracture_threshold}

    def read(self, upload: Upload) -> list[Any]:
        from fracdet.io.dicom import DicomOptions, read_frames
        from fracdet.io.images import read_image

        try:
            if upload.kind == "dicom":
                return read_frames(upload.path, DicomOptions(force=self.settings.force_dicom,
                                                             window=self.settings.dicom_window))
            return [read_image(upload.path, min_size=self.predictor.artifact.preprocess.input_size)]
        except ImageReadError as exc:
            status = 422 if "--force" in exc.reason else 400
            raise ApiError(status, f"{upload.name}: {exc.reason.replace(' — use --force to predict anyway', '')}")
        except FracdetError as exc:
            raise ApiError(400, f"{upload.name}: {' '.join(str(exc).split())}".replace(str(upload.path), upload.name))

    def overlay(self, xray: Any, pred: Any, method: str) -> tuple[str, dict[str, float] | None]:
        """The overlay PNG (base64, at most 1024 px) with the heatmap's "look here" box drawn in,
        and that box in the image's pixels (derived from the heatmap: not a detected fracture)."""
        from fracdet import explain
        from PIL import Image

        box = explain.top_box(pred.heatmap)
        img = explain.render_overlay(xray.pixels, pred.heatmap, text=explain.verdict_text(pred),
                                     method=explain.method_name(method), box=box)
        if max(img.size) > 1024:
            scale = 1024 / max(img.size)
            img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                             Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        shown = dict(zip(("x", "y", "width", "height"), box)) if box is not None else None
        return base64.b64encode(buf.getvalue()).decode("ascii"), shown

    def predict(self, files: list[UploadFile], heatmap: bool, cam_method: str) -> dict[str, Any]:
        s = self.settings
        if len(files) > s.max_files:
            raise ApiError(413, f"too many files ({len(files)}; the limit is {s.max_files} per request)")
        with UploadFolder() as folder:
            uploads: list[Upload] = []
            budget = s.max_upload_bytes
            for f in files:
                up = folder.take(f.filename, f.file, budget)
                budget -= up.size
                check_header(up, s.max_pixels, s.force_dicom)
                uploads.append(up)
            items = []  # (upload, xray, prediction)
            for up in uploads:
                for xray in self.read(up):
                    if heatmap:
                        with self.heatmap_lock:
                            pred = self.predictor.predict(xray, heatmap=True, cam_method=cam_method)
                        png = self.overlay(xray, pred, cam_method)
                        pred.heatmap = None
                    else:
                        pred, png = self.predictor.predict(xray), None
                    items.append((up, pred, png))
        rows = [prediction_row(p, self.predictor, s.model_name, source="api", file_name=up.name, source_path=None,
                               input_sha256=up.sha256) for up, p, _ in items]
        ids: list[int | None] = self.store.add_predictions(rows) if self.store is not None else [None] * len(rows)
        out = []
        for (up, pred, png), row, rid in zip(items, rows, ids):
            dicom = {k: row[k] for k in ("study_uid", "series_uid", "sop_uid", "modality", "body_part", "view")}
            entry: dict[str, Any] = {
                "id": rid, "file": up.name, "input_sha256": up.sha256, "probability": pred.probability,
                "label": pred.label, "verdict": pred.verdict, "reason": pred.reason, "warning": pred.warning,
                "thresholds": self.thresholds, "model": self.model,
                "boxes": [[round(float(v), 4) for v in b] for b in pred.boxes] if pred.boxes is not None else None,
                "dicom": ({**dicom, "frame": pred.meta.get("frame")} if up.kind == "dicom" else None),
            }
            if png is not None:
                entry["overlay_png"], entry["heatmap_box"] = png
            out.append(entry)
        return {"predictions": out, "studies": self.studies(items, ids), "model": self.model,
                "notice": RESEARCH_NOTE}

    def studies(self, items: list[tuple[Upload, Any, Any]], ids: list[int | None]) -> list[dict[str, Any]]:
        """Study verdicts (max over views) where several views share a StudyInstanceUID."""
        from fracdet.inference import group_by_study

        with_uid = [(p, rid) for (_, p, _), rid in zip(items, ids) if p.meta.get("study_uid")]
        if len(with_uid) < 2:
            return []
        id_of = {id(p): rid for p, rid in with_uid}
        out = []
        for study in group_by_study([p for p, _ in with_uid], "max", decision=self.predictor.decision):
            if len(study.views) < 2:
                continue
            out.append({"study_uid": study.study, "probability": study.probability, "label": study.label,
                        "verdict": study.verdict, "reason": study.reason, "aggregation": study.aggregation,
                        "n_views": study.n_views,
                        "thresholds": self.thresholds, "views": [id_of.get(id(v)) for v in study.views]})
        return out

    def feedback(self, fb: Feedback) -> dict[str, Any]:
        if self.store is None:
            raise ApiError(503, "this server keeps no records (started without a database)")
        try:
            return self.store.add_feedback(fb.prediction_id, fb.verdict, fb.reader, fb.comment)
        except KeyError:
            raise ApiError(404, f"no recorded prediction with id {fb.prediction_id}") from None
        except FracdetError as exc:
            raise ApiError(400, str(exc)) from None


def create_app(predictor: Any, settings: Settings | None = None) -> FastAPI:
    """The application for one loaded predictor. Opens (and migrates) the record database
    now, when ``settings.db_url`` is set, so a bad URL fails at start, not at the first film."""
    settings = settings or Settings()
    store = open_store(settings.db_url) if settings.db_url else None
    service = _Service(predictor, settings, store)
    pool = ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="fracdet-infer")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="fracdet", version=__version__, lifespan=lifespan,
                  description="Fracture detection on bone radiographs. " + RESEARCH_NOTE)
    app.state.service = service
    app.state.pool = pool
    app.add_middleware(_Guard, limit=settings.max_upload_bytes, api_key=settings.api_key)

    async def in_pool(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def require_key(given: Annotated[str | None, Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))]
                    = None) -> None:  # checked by _Guard before the body is read; here for the schema too
        if not _key_ok(given, settings.api_key):
            raise ApiError(401, KEY_MESSAGE)

    keyed = [Depends(require_key)]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:5]]
        return JSONResponse(error_body(400, "invalid request: " + "; ".join(parts), "bad_request"), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__,
                  " ".join(str(exc).split())[:300])
        return JSONResponse(error_body(500, f"internal error ({type(exc).__name__})"), status_code=500)

    @app.get("/v1/health", summary="Liveness: the model is loaded")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_loaded": True, "model": service.model, "backend": predictor.backend,
                "records": store is not None, "fracdet_version": __version__}

    @app.get("/v1/model", dependencies=keyed, summary="The model card's facts")
    async def model() -> JSONResponse:
        return JSONResponse(model_info(predictor, settings))

    @app.post("/v1/predict", dependencies=keyed, summary="Predict uploaded radiographs")
    async def predict(files: Annotated[list[UploadFile], File(description="one or more images (JPEG, PNG, DICOM)")],
                      heatmap: Annotated[bool, Query(description="add a heatmap overlay PNG (base64)")] = False,
                      cam_method: Annotated[str, Query(description="gradcam, gradcam++, eigencam, scorecam")] = "gradcam",
                      ) -> JSONResponse:
        result = await in_pool(service.predict, files, heatmap, cam_method)
        return JSONResponse(_finite(result))

    @app.post("/v1/feedback", dependencies=keyed, summary="A reader's verdict on a recorded prediction")
    async def feedback(body: Feedback) -> JSONResponse:
        return JSONResponse(_finite(await in_pool(service.feedback, body)))

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page_html())

    return app


def _page_html() -> str:
    from importlib import resources

    try:
        return (resources.files("fracdet.serve") / "page.html").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return (f"<!doctype html><meta charset='utf-8'><title>fracdet</title><h1>fracdet</h1>"
                f"<p>{RESEARCH_NOTE}</p><p>API: <a href='/docs'>/docs</a></p>")


__all__ = ["Feedback", "create_app", "model_info"]
