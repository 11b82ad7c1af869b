"""The documentation site builds with ``mkdocs build --strict``: a link to a page or an anchor that does not
exist, a page left out of the navigation, or a docstring mkdocstrings cannot render fails ``make test``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings_handlers.python")),
    reason="MkDocs is not installed (pip install -e '.[docs]'; make test installs it): the strict docs build "
    "was not run",
)
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    warnings = [line for line in done.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0, "\n".join(warnings) or done.stderr
    assert (tmp_path / "site" / "reference" / "inference" / "index.html").is_file()


def test_strict_mode_checks_anchors_and_pages_left_out() -> None:
    """What --strict turns into failures: MkDocs only warns about these when the config says so."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))
    assert config["strict"] is True
    assert config["validation"] == {
        "omitted_files": "warn",
        "absolute_links": "warn",
        "unrecognized_links": "warn",
        "anchors": "warn",
    }
