"""The FastAPI app of ``ctran serve``: the tagging page and the JSON API over one ``Predictor``.

``create_app(predictor)`` returns an ASGI app (run it with uvicorn, see ``ctran.serving.server``):

- ``GET /``: the page (``static/``; no CDN, no external font, works offline);
- ``POST /api/images``: multipart field ``file`` -> ``{"id", "predictions", ...}``, the image encoded once;
- ``POST /api/images/{id}/condition``: ``{"known": {label: bool}, "extra": {label: bool}}`` ->
  ``{"predictions", ..., "moved_by_known"}`` from the cached tokens (how far the known labels moved the
  others: ``{"overall": [...], "by_label": {label: [...]}}``, null when nothing is known);
- ``GET /api/images/{id}/suggest``: which unknown labels to ask about next (query ``known``/``extra`` as
  ``a=1,b=0``, ``k``, ``method``, ``candidates``) -> ``{"method", "suggestions": [{"label", ...}]}``;
- ``GET /api/images/{id}/attention/{label}``: PNG heat-map (query ``known``/``extra`` as ``a=1,b=0``);
- ``DELETE /api/images/{id}``; ``GET /api/labels``; ``GET /healthz``;
- ``GET /api/examples``, ``GET /api/examples/{name}`` (the file), ``POST /api/examples/{name}`` (as upload).

Every error is a 4xx (or 500) JSON body ``{"error": message}``; the OpenAPI schema is at ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException

from ctran import __version__
from ctran.errors import CTranError
from ctran.inference import Influence, Prediction, Predictor
from ctran.inference.known import parse_spec
from ctran.inference.suggest import METHODS as SUGGEST_METHODS
from ctran.serving import schemas
from ctran.serving.errors import ApiError
from ctran.serving.security import Guard
from ctran.serving.service import CachedImage, TaggingService
from ctran.serving.uploads import FILE_FIELD, MAX_PIXELS, MAX_UPLOAD_BYTES, decode_image, read_upload

STATIC = Path(__file__).parent / "static"
SUGGEST_CANDIDATES = 16
ERRORS = {code: {"model": schemas.ErrorBody} for code in (400, 404, 413, 415, 422)}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {FILE_FIELD: {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def create_app(
    predictor: Predictor,
    examples: str | Path | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    cache_size: int = 32,
    threshold: float | None = None,
    allowed_hosts: Iterable[str] | None = None,
    suggest_candidates: int | None = SUGGEST_CANDIDATES,
    suggest_method: str = "information",
) -> FastAPI:
    """The app. ``threshold`` None uses the checkpoint's calibrated thresholds when it has them, else 0.5;
    ``allowed_hosts`` None accepts any ``Host`` header (``ctran serve`` passes the loopback names);
    ``suggest_candidates`` is how many of the most uncertain labels ``suggest`` scores by default (None:
    all), which bounds its cost to 2 x that many re-conditionings; ``suggest_method`` is its default method
    (the page's "Ask next" uses it): ``uncertainty`` needs no extra model call, which matters at the
    paper's scale on a CPU."""
    if suggest_method not in SUGGEST_METHODS:
        choices = ", ".join(SUGGEST_METHODS)
        raise CTranError(f"suggest_method must be one of {choices}, got {suggest_method!r}")
    service = TaggingService(predictor, cache_size, threshold)
    gallery = find_examples(examples) if examples is not None else {}
    app = FastAPI(
        title="ctran serve",
        version=__version__,
        description="Tag images with C-Tran: mark the labels you know, and the others are re-predicted.",
        docs_url=None,  # FastAPI's API browsers load their scripts from a CDN; the schema itself is local
        redoc_url=None,
    )
    app.add_middleware(Guard, allowed_hosts=allowed_hosts)
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/healthz", response_model=schemas.Health, tags=["service"])
    def health() -> schemas.Health:
        """200 once the model is loaded (it is loaded before the server starts)."""
        return schemas.Health(
            status="ok",
            targets=len(predictor.target_names),
            extras=len(predictor.extra_names),
            cached_images=len(service.cache),
        )

    @app.get("/api/labels", response_model=schemas.Labels, tags=["labels"])
    def labels() -> schemas.Labels:
        cuts = dict(zip(predictor.target_names, service.cutoffs.tolist(), strict=True))
        return schemas.Labels(targets=predictor.target_names, extras=predictor.extra_names, thresholds=cuts)

    @app.post(
        "/api/images",
        response_model=schemas.ImageResult,
        responses=ERRORS,
        openapi_extra=UPLOAD_BODY,
        tags=["images"],
    )
    async def upload(request: Request) -> schemas.ImageResult:
        """Upload an image (multipart field ``file``): it is encoded once and its predictions returned."""
        sent = await read_upload(request.headers, request.stream(), max_upload_bytes)
        return await run_in_threadpool(_add, service, sent.data, sent.filename, max_pixels)

    @app.post(
        "/api/images/{image_id}/condition",
        response_model=schemas.Predictions,
        responses=ERRORS,
        tags=["images"],
    )
    def condition(image_id: str, body: schemas.ConditionRequest) -> schemas.Predictions:
        """Re-predict the image's unknown target labels given the known and extra labels, and say how far
        those moved the others (``moved_by_known``: the largest changes overall, and each known label's own
        given the others)."""
        prediction, moved = service.condition(image_id, body.known, body.extra)
        return _predictions(prediction, moved)

    @app.get(
        "/api/images/{image_id}/suggest",
        response_model=schemas.Suggestions,
        responses=ERRORS,
        tags=["images"],
    )
    def suggest(
        image_id: str,
        known: str = "",
        extra: str = "",
        k: Annotated[int, Query(ge=1, le=1000)] = 3,
        method: Literal["information", "uncertainty"] | None = None,
        candidates: Annotated[int | None, Query(ge=1)] = None,
    ) -> schemas.Suggestions:
        """The unknown target labels most worth asking about next, best first (``information``: by the
        expected reduction of the other labels' uncertainty, scoring the ``candidates`` most uncertain (the
        server's default when not given); ``uncertainty``: by their own; no ``method``: the server's)."""
        method = method or suggest_method
        pool = candidates or suggest_candidates
        known_spec, extra_spec = parse_spec(known, "known"), parse_spec(extra, "extra")
        found = service.suggest(image_id, known_spec, extra_spec, k, method, pool)
        return schemas.Suggestions(method=method, suggestions=[s.to_dict() for s in found])

    @app.get(
        "/api/images/{image_id}/attention/{label:path}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the heat-map"}, **ERRORS},
        tags=["images"],
    )
    def attention(
        image_id: str, label: str, known: str = "", extra: str = "", rollout: bool = False
    ) -> Response:
        """Where the label's token looks in the image (query ``known=digit_3=1,digit_5=0`` conditions it)."""
        png = service.attention_png(
            image_id, label, parse_spec(known, "known"), parse_spec(extra, "extra"), rollout
        )
        return Response(png, media_type="image/png", headers={"cache-control": "no-store"})

    @app.delete("/api/images/{image_id}", status_code=204, responses=ERRORS, tags=["images"])
    def forget(image_id: str) -> Response:
        """Drop the image's cached features now, instead of when the cache is full."""
        service.remove(image_id)
        return Response(status_code=204)

    @app.get("/api/examples", response_model=schemas.Examples, tags=["examples"])
    def list_examples() -> schemas.Examples:
        return schemas.Examples(examples=list(gallery))

    @app.get(
        "/api/examples/{name}",
        response_class=FileResponse,
        responses={200: {"content": {"image/*": {}}}, **ERRORS},
        tags=["examples"],
    )
    def example_file(name: str) -> FileResponse:
        """The example image itself, for display."""
        return FileResponse(_example(gallery, name))

    @app.post("/api/examples/{name}", response_model=schemas.ImageResult, responses=ERRORS, tags=["examples"])
    def use_example(name: str) -> schemas.ImageResult:
        """Encode an example image, as if it had been uploaded."""
        path = _example(gallery, name)
        return _add(service, path.read_bytes(), name, max_pixels)

    return app


def find_examples(folder: str | Path) -> dict[str, Path]:
    """Image files directly in ``folder`` by name (sorted); only these names are ever served."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CTranError(f"{folder}: examples folder not found (expected a folder of image files)")
    suffixes = set(Image.registered_extensions())
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise CTranError(f"{folder}: no image files (.png, .jpg, ...) in the examples folder")
    return {path.name: path for path in files}


def _example(gallery: dict[str, Path], name: str) -> Path:
    if name not in gallery:
        raise ApiError(404, f"no example named {name!r}; see GET /api/examples")
    return gallery[name]


def _add(service: TaggingService, data: bytes, name: str, max_pixels: int) -> schemas.ImageResult:
    """Decode (outside the model lock), encode and cache an image."""
    image = decode_image(data, max_pixels)
    image_id, cached, prediction = service.add(image, name)
    return _image_result(image_id, cached, prediction)


def _image_result(image_id: str, cached: CachedImage, prediction: Prediction) -> schemas.ImageResult:
    width, height = cached.size
    return schemas.ImageResult(
        id=image_id, name=cached.name, width=width, height=height, **_predictions(prediction).model_dump()
    )


def _predictions(prediction: Prediction, moved: Influence | None = None) -> schemas.Predictions:
    return schemas.Predictions(
        predictions=prediction.probs,
        predicted=prediction.predicted,
        known=prediction.known,
        moved_by_known=None if moved is None else moved.to_dict(),
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": message}``: ours, user mistakes, validation, routing and the unexpected."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.message)

    @app.exception_handler(CTranError)
    async def user_error(_: Request, err: CTranError) -> JSONResponse:
        return _error(400, str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = err.errors()
        broken = [p for p in problems if p["type"] == "json_invalid"]
        if broken:
            reason, where = broken[0].get("ctx", {}).get("error", broken[0]["msg"]), broken[0]["loc"][-1]
            return _error(400, f"malformed JSON body: {reason} at character {where}")
        return _error(422, "; ".join(_describe(p) for p in problems[:5]))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        message = (
            f"no such page or endpoint: {request.url.path}" if err.status_code == 404 else str(err.detail)
        )
        return _error(err.status_code, message)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(err).__name__}); see the server's log")


def _describe(problem: dict) -> str:
    """``{"loc": ("body", "known", "digit_3"), "msg": "Input should be a valid boolean"}`` -> one phrase."""
    where = ".".join(str(part) for part in problem["loc"] if part != "body") or "body"
    return f"{where}: {problem['msg']}"
