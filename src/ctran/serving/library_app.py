"""The FastAPI app of ``ctran annotate``: a library's page and JSON API, the model in the loop.

``create_library_app(library, predictor)`` returns an ASGI app (run it as ``ctran serve``'s, see
``ctran.serving.server``). Image ids are paths relative to the library folder, sent as the ``id`` query
parameter or the ``image`` body field; only ids the library's scan found are ever opened.

- ``GET /``: the page (``static/library.html``); ``GET /healthz``;
- ``GET /api/labels``; ``POST /api/labels`` ``{"name", "kind"}``: a new, untrained label;
- ``GET /api/images?label=&show=all|untouched|answered&order=folder|uncertain&offset=&limit=``: the images
  that pass the filters and the progress counts;
- ``GET /api/image?id=``: one image's answers, predictions conditioned on them, what to ask next;
- ``GET /api/file?id=``: the image itself (upright, at most 1600 pixels a side);
- ``GET /api/next?after=&order=&label=&show=&skip=``: which image to show next;
- ``POST /api/answers`` ``{"image", "label", "value": true|false|null, "annotator"}``;
- ``POST /api/accept`` ``{"image", "annotator"}``: every unknown trained label as predicted;
- ``POST /api/undo`` ``{"annotator", "image"?}``; ``GET /api/history?id=&limit=``.

Every error is a 4xx JSON body ``{"error": message}``, as in ``ctran serve``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import FastAPI, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from ctran import __version__
from ctran.annotation.library import Library
from ctran.annotation.store import Answer
from ctran.inference import Predictor, load
from ctran.serving import library_schemas as schemas
from ctran.serving.app import ERRORS, STATIC, add_error_handlers
from ctran.serving.library_service import LibraryService, View
from ctran.serving.retraining import Retrainer
from ctran.serving.schemas import ErrorBody
from ctran.serving.security import Guard

HISTORY_SHOWN = 20
Order = Literal["folder", "uncertain"]
Show = Literal["all", "untouched", "answered"]


def create_library_app(
    library: Library,
    predictor: Predictor,
    cache_size: int = 256,
    threshold: float | None = None,
    allowed_hosts: Iterable[str] | None = None,
    suggest_method: str = "information",
    suggest_candidates: int | None = 16,
    checkpoint: str | None = None,
) -> FastAPI:
    """The app; the background pass over the library runs while the app does (its lifespan).
    ``allowed_hosts`` None accepts any ``Host`` header (``ctran annotate`` passes the loopback names).
    ``checkpoint`` is the file ``predictor`` came from: the page's retrain starts from it (None: the
    library's current model)."""
    service = LibraryService(
        library, predictor, cache_size, threshold, suggest_method, suggest_candidates, checkpoint
    )
    retrainer = Retrainer(service, lambda path: load(path, predictor.device, predictor.batch_size))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        service.stop()

    app = FastAPI(
        title="ctran annotate",
        version=__version__,
        description="Annotate a library of images with C-Tran in the loop: every answer kept.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(Guard, allowed_hosts=allowed_hosts)
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "library.html", headers={"cache-control": "no-cache"})

    @app.get("/healthz", response_model=schemas.LibraryHealth, tags=["service"])
    def health() -> schemas.LibraryHealth:
        return schemas.LibraryHealth(
            status="ok",
            images=len(library.images),
            scored=len(service.summaries()),
            targets=len(service.predictor.target_names),
            extras=len(service.predictor.extra_names),
            labels=len(library.store.labels()),
        )

    @app.get("/api/labels", response_model=schemas.LibraryLabels, tags=["labels"])
    def labels() -> schemas.LibraryLabels:
        return _labels(service)

    @app.post(
        "/api/labels",
        status_code=201,
        response_model=schemas.LibraryLabels,
        responses={**ERRORS, 409: {"model": ErrorBody}},
        tags=["labels"],
    )
    def add_label(body: schemas.NewLabel) -> schemas.LibraryLabels:
        """Add a label: unknown on every image until answered, shown as not trained until a retrain."""
        service.add_label(body.name, body.kind)
        return _labels(service)

    @app.get("/api/images", response_model=schemas.ImageList, responses=ERRORS, tags=["images"])
    def images(
        label: str | None = None,
        show: Show = "all",
        order: Order = "folder",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> schemas.ImageList:
        """The images with ``label`` answered yes or predicted (unknown and at or above threshold), or all;
        ``show`` untouched (no answer) or answered ones only; in folder order or least certain first."""
        matched, progress = service.listing(label, show, order)
        states, summaries = library.store.states(), service.summaries()
        entries = []
        for image in matched[offset : offset + limit]:
            summary = summaries.get(image)
            entries.append(
                schemas.ImageEntry(
                    id=image,
                    answers=len(states.get(image, {})),
                    uncertainty=None if summary is None or summary.error else summary.uncertainty,
                    error=summary.error if summary else None,
                )
            )
        return schemas.ImageList(**progress, offset=offset, images=entries)

    @app.get("/api/image", response_model=schemas.ImageView, responses=ERRORS, tags=["images"])
    def image(id: str) -> schemas.ImageView:
        """One image: its answers, its trained labels' predictions given them, and what to ask next."""
        return _view(service, service.view(id))

    @app.get(
        "/api/file",
        response_class=Response,
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **ERRORS},
        tags=["images"],
    )
    async def file(id: str) -> Response:
        """The image, upright and at most 1600 pixels a side (PNG when small, else JPEG)."""
        data, media_type = await run_in_threadpool(service.preview, id)
        return Response(data, media_type=media_type, headers={"cache-control": "private, max-age=60"})

    @app.get("/api/next", response_model=schemas.NextImage, responses=ERRORS, tags=["images"])
    def next_image(
        after: str | None = None,
        order: Order = "folder",
        label: str | None = None,
        show: Show = "all",
        skip: Annotated[list[str], Query(max_length=200)] = [],  # noqa: B006 - FastAPI copies defaults
    ) -> schemas.NextImage:
        """The image after ``after`` in folder order (wrapping), or the least certain one with unknown
        labels left that is not ``after`` or in ``skip``; the server starts encoding it at once."""
        return schemas.NextImage(id=service.next_image(after, order, label, show, skip))

    @app.post("/api/answers", response_model=schemas.AnswerResult, responses=ERRORS, tags=["answers"])
    def answer(body: schemas.AnswerRequest) -> schemas.AnswerResult:
        """Record an answer (stored before this returns) and re-predict the image knowing it."""
        recorded, view = service.answer(body.image, body.label, body.value, body.annotator)
        return schemas.AnswerResult(answer=_answer(recorded), image=_view(service, view))

    @app.post("/api/accept", response_model=schemas.AcceptResult, responses=ERRORS, tags=["answers"])
    def accept(body: schemas.AcceptRequest) -> schemas.AcceptResult:
        """Answer every trained target still unknown as predicted: yes at or above threshold, else no."""
        recorded, view = service.accept(body.image, body.annotator)
        return schemas.AcceptResult(answers=[_answer(a) for a in recorded], image=_view(service, view))

    @app.post("/api/undo", response_model=schemas.UndoResult, responses=ERRORS, tags=["answers"])
    def undo(body: schemas.UndoRequest) -> schemas.UndoResult:
        """Undo the annotator's last answer (on ``image`` if given); repeated calls walk further back."""
        undone, view = service.undo(body.annotator, body.image)
        return schemas.UndoResult(
            answer=None if undone is None else _answer(undone),
            image=None if view is None else _view(service, view),
        )

    @app.get("/api/retrain", response_model=schemas.RetrainStatus, tags=["model"])
    def retrain_status() -> schemas.RetrainStatus:
        """Where the page's retrain is: idle, running (stage, epoch of epochs), done or failed."""
        return schemas.RetrainStatus(**retrainer.status())

    @app.post(
        "/api/retrain",
        status_code=202,
        response_model=schemas.RetrainStatus,
        responses={**ERRORS, 409: {"model": ErrorBody}},
        tags=["model"],
    )
    def retrain(body: schemas.RetrainRequest) -> schemas.RetrainStatus:
        """Fine-tune the model on the library's answers in the background; when it is done the library
        is served by the new model (annotating goes on meanwhile with the old one)."""
        return schemas.RetrainStatus(**retrainer.start(body.epochs))

    @app.get("/api/history", response_model=schemas.History, responses=ERRORS, tags=["answers"])
    def history(id: str, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> schemas.History:
        """Every answer about the image, newest first, whoever gave it."""
        return schemas.History(answers=[_answer(a) for a in service.history(id, limit)])

    return app


def _labels(service: LibraryService) -> schemas.LibraryLabels:
    return schemas.LibraryLabels(
        labels=[
            schemas.LabelInfo(name=name, kind=kind, trained=trained, threshold=threshold)
            for name, kind, trained, threshold in service.labels()
        ]
    )


def _answer(answer: Answer) -> schemas.Answer:
    return schemas.Answer(**answer.to_dict())


def _view(service: LibraryService, view: View) -> schemas.ImageView:
    width, height = view.size
    known_to_model = set(service.predictor.label_names)
    return schemas.ImageView(
        id=view.image,
        index=service.library.images.index(view.image),
        width=width,
        height=height,
        known=view.known,
        predictions=view.prediction.probs,
        predicted=view.prediction.predicted,
        untrained=[name for name, _, _ in service.store.labels() if name not in known_to_model],
        uncertainty=view.summary.uncertainty,
        ask=[s.to_dict() for s in view.ask],
        history=[_answer(a) for a in service.store.history(view.image, HISTORY_SHOWN)],
    )
