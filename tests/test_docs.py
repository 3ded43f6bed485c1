"""The documentation site builds with ``mkdocs build --strict``.

Strict mode turns every warning into an error: a page in ``docs/`` missing from
the nav, a nav entry without its page, a broken link or anchor, and an API
reference entry (``::: sktransfer...``) that mkdocstrings cannot render.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_TOOLS = ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material")


def _missing_tools() -> list[str]:
    missing = []
    for name in DOCS_TOOLS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def test_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text()
    in_nav = set(re.findall(r":\s*\"?([\w/.-]+\.md)\"?\s*$", config, re.M))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages - in_nav == set(), "pages missing from the nav in mkdocs.yml"


@pytest.mark.skipif(
    bool(_missing_tools()),
    reason=f"docs tools not installed ({', '.join(_missing_tools())}): pip install -e '.[docs]'",
)
def test_site_builds_in_strict_mode(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "-d",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, (
        f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    )
    site = tmp_path / "site"
    reference = (site / "api" / "estimators" / "index.html").read_text()
    # the API reference is rendered from the numpy docstrings, Examples included
    assert "backbone_lr_scale" in reference and "Examples" in reference
    assert (site / "img" / "strategies.png").is_file()
    assert seconds < 120, f"the docs build took {seconds:.0f} s"
