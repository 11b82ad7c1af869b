"""Optional dependencies: which ``pip install 'ctran[EXTRA]'`` brings which package, and the one message
that says so when a command needs one that is missing.

``pip install ctran`` is the model, data, training, evaluation, prediction and tagging. The web server stack
(``serve``), plotting (``viz``), ONNX (``export``) and TensorBoard logs (``tensorboard``) are extras;
``ctran[all]`` brings every one. A command that needs a missing extra stops (or, where the missing part is
a side product, skips it) with ``install_hint``'s message naming the packages and the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ctran.errors import CTranError

# extra -> {module to import: package to install}; pyproject.toml's optional dependencies say the same
EXTRAS = {
    "serve": {
        "fastapi": "fastapi",
        "uvicorn": "uvicorn",
        "python_multipart": "python-multipart",
        "pydantic": "pydantic",
    },
    "viz": {"matplotlib": "matplotlib"},
    "export": {"onnx": "onnx", "onnxruntime": "onnxruntime"},
    "tensorboard": {"tensorboard": "tensorboard"},
}


class MissingExtraError(CTranError):
    """A feature needs an optional package that is not installed; the message names the extra."""


def missing(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The packages of ``extra`` (or only those of ``modules``) that cannot be imported."""
    wanted = EXTRAS[extra] if modules is None else {m: EXTRAS[extra][m] for m in modules}
    absent = []
    for module, package in wanted.items():
        try:
            importlib.import_module(module)
        except ImportError:
            absent.append(package)
    return absent


def install_hint(extra: str, what: str, packages: list[str]) -> str:
    """``what`` needs ``packages``: the one sentence every command prints for a missing extra."""
    names = " and ".join(packages)
    return f"{what} needs {names}, which {'is' if len(packages) == 1 else 'are'} not installed: " + (
        f"pip install 'ctran[{extra}]'"
    )


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise ``MissingExtraError`` unless every package of ``extra`` (or of ``modules``) imports."""
    absent = missing(extra, modules)
    if absent:
        raise MissingExtraError(install_hint(extra, what, absent))


def pyplot(what: str) -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend, or ``MissingExtraError`` naming ``ctran[viz]``."""
    require("viz", what)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
