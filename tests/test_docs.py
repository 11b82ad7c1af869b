"""The documentation site builds with ``mkdocs build --strict``: a link to a page or an anchor that does not
exist, a page left out of the navigation, or a docstring mkdocstrings cannot render fails ``make test``."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
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
    assert not broken_links(tmp_path / "site"), "\n".join(broken_links(tmp_path / "site"))


def broken_links(site: Path) -> list[str]:
    """Relative links of the README and CONTRIBUTING.md (outside the site, so MkDocs does not check them)
    to a file that does not exist, or to an anchor that the built page of ``docs/PAGE.md`` does not have."""
    broken = []
    for page in (ROOT / "README.md", ROOT / "CONTRIBUTING.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # https://...
                continue
            path, _, anchor = target.partition("#")
            if not (ROOT / path).exists():
                broken.append(f"{page.name}: {target}: no such file")
            elif anchor and path.startswith("docs/") and path.endswith(".md"):
                built = site / Path(path).relative_to("docs").with_suffix("") / "index.html"
                if f'id="{anchor}"' not in built.read_text():
                    broken.append(f"{page.name}: {target}: no such anchor")
    return broken


def test_strict_mode_checks_anchors_and_pages_left_out() -> None:
    """What --strict turns into failures: MkDocs only warns about these when the config says so."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!relative ", ""))  # MkDocs' own tag
    assert config["strict"] is True
    assert config["validation"] == {
        "omitted_files": "warn",
        "absolute_links": "warn",
        "unrecognized_links": "warn",
        "anchors": "warn",
    }


def test_licence_and_citation_agree_with_the_package() -> None:
    """LICENSE is the Apache-2.0 text that pyproject.toml declares; CITATION.cff cites paper and project."""
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence  # the whole text, not a pointer to it
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["license"] == pyproject["license"] == "Apache-2.0" and cff["version"] == pyproject["version"]
    paper = cff["preferred-citation"]
    assert paper["title"] == "General Multi-label Image Classification with Transformers"
    assert [a["family-names"] for a in paper["authors"]] == ["Lanchantin", "Wang", "Ordonez", "Qi"]
    assert paper["year"] == 2021 and "CVPR" in paper["collection-title"]
