"""Ship a trained C-Tran as ONNX or TorchScript: ``logits = f(image, label_states)`` with a dynamic batch.

Inputs: ``image`` (B, 3, S, S) float32, normalised with the checkpoint's mean/std; ``label_states`` (B, L)
int64 in {-1, 0, 1} (targets then extras, as ``ctran.states``). Output: ``logits`` (B, L). Label names, input
size, normalisation and calibrated thresholds travel inside the file (ONNX metadata property ``ctran``;
TorchScript extra file ``ctran.json``), so a consumer needs nothing else.

Both formats are produced by tracing (``torch.onnx.export(dynamo=False)``, ``torch.jit.trace``). The
``torch.export``-based ONNX exporter cannot take the model's data-dependent check of the state values; the
tracer records it as a constant, so the exported graph computes exactly the model's logits without it.
``nn.MultiheadAttention``'s fused fast path is switched off while tracing: it is one native op that the ONNX
exporter does not know, and the regular path computes the same numbers op by op.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctran.errors import CTranError
from ctran.inference.predictor import Predictor
from ctran.states import UNKNOWN

FORMATS = ("onnx", "torchscript")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
INPUT_NAMES, OUTPUT_NAMES = ["image", "label_states"], ["logits"]


class LogitsOnly(nn.Module):
    """``forward(image, label_states) -> logits``: the exported signature, one tensor in each slot."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, label_states: torch.Tensor) -> torch.Tensor:
        return self.model(image, label_states)


def format_for(path: str | Path, fmt: str | None = None) -> str:
    """The export format: as given, or from the file suffix (.onnx; .pt/.ts/.torchscript)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise CTranError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise CTranError(f"cannot tell the format from {Path(path).name!r}; pass --format onnx|torchscript")
    return SUFFIXES[suffix]


def metadata(predictor: Predictor) -> dict:
    """What a consumer of the exported file needs to prepare inputs and read the outputs."""
    thresholds = None if predictor.thresholds is None else predictor.thresholds.tolist()
    return {
        "format": "ctran-export",
        "version": 1,
        "inputs": {"image": "(B, 3, S, S) float32, normalised", "label_states": "(B, L) int64 in {-1, 0, 1}"},
        "outputs": {"logits": "(B, L) float32; probabilities = sigmoid(logits)"},
        "target_names": predictor.target_names,
        "extra_names": predictor.extra_names,
        "image_size": predictor.image_size,
        "scale_size": predictor.scale_size,
        "mean": list(predictor.normalization.mean),
        "std": list(predictor.normalization.std),
        "thresholds": thresholds,
    }


def example_inputs(predictor: Predictor, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised images and mixed states; batch > 1 so no size-1 batch dimension is baked in."""
    if predictor.image_size is None:
        raise CTranError("this checkpoint stores no image size, which export needs for its example input")
    generator = torch.Generator().manual_seed(0)
    size, num_labels = predictor.image_size, len(predictor.label_names)
    image = torch.randn(batch, 3, size, size, generator=generator)
    states = torch.randint(UNKNOWN, 2, (batch, num_labels), generator=generator)
    return image.to(predictor.device), states.to(predictor.device)


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silence torch's notices that TorchScript and the tracing ONNX exporter are deprecated.

    They are the only routes for this model (see above) and for the TorchScript format itself.
    """
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"torch\.(jit|onnx)")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        # the label-projection table lookup: its indices are state rows 0..2, never negative
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
        yield


@contextmanager
def _tracing() -> Iterator[None]:
    """Regular attention path, no autograd, and quiet about what tracing this model is known to do."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with _quiet_deprecations(), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # checks become constants
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def export_onnx(predictor: Predictor, path: str | Path, opset: int = 17) -> Path:
    """Write an ONNX model with a dynamic batch dimension and the metadata property ``ctran``."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {0: "batch"}
    with _tracing():
        torch.onnx.export(
            LogitsOnly(predictor.model).eval(),
            example_inputs(predictor),
            str(path),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes={"image": batch, "label_states": batch, "logits": batch},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"ctran": json.dumps(metadata(predictor))})
    onnx.save(proto, str(path))
    return path


def export_torchscript(predictor: Predictor, path: str | Path) -> Path:
    """Write a traced TorchScript module with the extra file ``ctran.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _tracing():
        traced = torch.jit.trace(LogitsOnly(predictor.model).eval(), example_inputs(predictor))
        torch.jit.save(traced, str(path), _extra_files={"ctran.json": json.dumps(metadata(predictor))})
    return path


def export(predictor: Predictor, path: str | Path, fmt: str | None = None, opset: int = 17) -> Path:
    """Export in ``fmt`` (or the format the suffix of ``path`` names)."""
    if format_for(path, fmt) == "onnx":
        return export_onnx(predictor, path, opset)
    return export_torchscript(predictor, path)


def run_exported(
    path: str | Path, image: torch.Tensor, states: torch.Tensor, fmt: str | None = None
) -> np.ndarray:
    """Logits (B, L) from an exported file, by onnxruntime or ``torch.jit.load`` on CPU."""
    if format_for(path, fmt) == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {"image": image.cpu().numpy(), "label_states": states.cpu().long().numpy()}
        return session.run(OUTPUT_NAMES, feeds)[0]
    with _quiet_deprecations():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(image.cpu(), states.cpu().long()).numpy()


def read_metadata(path: str | Path, fmt: str | None = None) -> dict:
    """The ``ctran`` metadata stored in an exported file."""
    if format_for(path, fmt) == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props["ctran"])
    files = {"ctran.json": ""}
    with _quiet_deprecations():
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return json.loads(files["ctran.json"])


def verify(predictor: Predictor, path: str | Path, fmt: str | None = None, batches: tuple = (1, 3)) -> float:
    """Largest |logit difference| between the file and PyTorch, on batch sizes other than the traced one."""
    worst = 0.0
    for batch in batches:
        image, states = example_inputs(predictor, batch)
        with torch.inference_mode():
            expected = predictor.model(image, states).float().cpu().numpy()
        worst = max(worst, float(np.abs(run_exported(path, image, states, fmt) - expected).max()))
    return worst
