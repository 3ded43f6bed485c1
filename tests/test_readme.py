"""The code in README.md and docs/*.md runs, as embetter runs its README.

Every fenced ``python`` block of a page is executed, in order, in one namespace per
page, with the repository root as working directory. A block preceded by a line
``<!-- not-tested: reason -->`` is skipped. A page whose runnable code reads
``../shared/data`` is skipped when that folder is absent. Tracebacks point at the
page's own line numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHARED_DATA = ROOT.parent / "shared" / "data"

_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
_PYTHON = {"python", "py", "python3"}
_SKIP_MARK = "<!-- not-tested"


def code_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(first line number, code, runnable)`` for each Python block of a page."""
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(1).lower() not in _PYTHON:
            continue
        before = text[: match.start()].rstrip().splitlines()
        runnable = not (before and before[-1].strip().startswith(_SKIP_MARK))
        first_line = text.count("\n", 0, match.start(2)) + 1
        blocks.append((first_line, match.group(2), runnable))
    return blocks


def test_code_blocks_finds_marked_and_unmarked_blocks():
    text = (
        "intro\n```python\nx = 1\n```\n<!-- not-tested: needs a file -->\n"
        "```python\nopen('f')\n```\n```bash\nmake demo\n```\n"
    )
    assert code_blocks(text) == [(3, "x = 1\n", True), (7, "open('f')\n", False)]


def test_every_page_has_runnable_examples():
    for page in PAGES:
        assert any(runnable for _, _, runnable in code_blocks(page.read_text())), page.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_examples_run(page, monkeypatch):
    blocks = [(line, code) for line, code, runnable in code_blocks(page.read_text()) if runnable]
    if any("../shared/data" in code for _, code in blocks) and not SHARED_DATA.is_dir():
        pytest.skip(f"{page.name} reads ../shared/data, which is absent ({SHARED_DATA})")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace = {"__name__": f"__{page.stem}__"}
    for line, code in blocks:
        # Pad so that line numbers in a traceback are the page's own.
        exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)


def test_readme_shows_real_demo_output_and_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.M)
    assert "PLACEHOLDER" not in readme
    assert "sktransfer demo: PretrainedFeatureExtractor() features + LogisticRegression" in readme
    assert re.search(r"^Summary \(total [0-9.]+ s\)$", readme, re.M)
