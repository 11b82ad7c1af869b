"""The page's "Retrain" action: learn from the library's answers in the background, then swap the model.

``ctran.annotation.learning.retrain`` runs in a thread of its own and reports each epoch; the page polls
``status``. Annotating goes on meanwhile with the old model. When the run ends, the new checkpoint is
loaded and handed to the service (``LibraryService.use``), which drops the features and summaries the old
model computed: the labels added in the library are predicted from then on. One run at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ctran.annotation.learning import retrain
from ctran.inference import Predictor
from ctran.serving.errors import ApiError
from ctran.serving.library_service import LibraryService

log = logging.getLogger("ctran.annotate")

Loader = Callable[[str], Predictor]  # checkpoint path -> a predictor on the server's device


class Retrainer:
    """One background retrain of a ``LibraryService``'s library; ``status()`` is what the page shows."""

    def __init__(self, service: LibraryService, load: Loader) -> None:
        self.service, self.load = service, load
        self._lock = threading.Lock()
        self._status: dict = {"state": "idle"}
        self._thread: threading.Thread | None = None

    def status(self) -> dict:
        with self._lock:
            return dict(self._status)

    def start(self, epochs: int | None = None) -> dict:
        """Start a retrain (409 while one runs); returns its first status."""
        with self._lock:
            if self._status["state"] == "running":
                raise ApiError(409, "a retrain is already running; wait for it to finish")
            self._status = {"state": "running", "stage": "starting", "started": time.time()}
            self._thread = threading.Thread(
                target=self._run, args=(epochs,), name="ctran-retrain", daemon=True
            )
            self._thread.start()
            return dict(self._status)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, epochs: int | None) -> None:
        try:
            result = retrain(
                self.service.library, self.service.checkpoint, epochs=epochs, progress=self._progress
            )
            self._update(stage="loading", checkpoint=str(result.checkpoint))
            self.service.use(self.load(str(result.checkpoint)), str(result.checkpoint))
            self._update(
                state="done",
                stage="done",
                new_labels=result.new_labels,
                val_map=result.val_map,
                seconds=round(result.seconds, 1),
            )
        except Exception as err:  # the page shows why; the old model keeps serving
            log.exception("retrain failed")
            self._update(state="failed", stage="failed", error=f"{type(err).__name__}: {err}")

    def _progress(self, event: dict) -> None:
        shown = {k: event[k] for k in ("stage", "epoch", "epochs") if k in event}
        if "val_mAP" in event:
            shown["val_map"] = event["val_mAP"]
        self._update(**shown)

    def _update(self, **changes: object) -> None:
        with self._lock:
            self._status.update(changes)
