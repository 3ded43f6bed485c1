"""The example scripts in docs/examples/ run, and print what docs/examples.md quotes.

Each script listed in ``EXAMPLES`` runs in this process (``runpy``, as ``__main__``), its
stdout is captured, and the output block quoted for it in docs/examples.md (the ```text
block after ``<!-- output: NAME -->``) must equal it line for line: every number in the
page is one the script printed. Words and integers must be equal; decimals within
``DECIMAL_TOLERANCE`` (the project's rule: floats are never compared exactly, and another
CPU, thread count or kernel may move the last printed digit). Only the scripts listed here
are run; other files in docs/examples/ belong to other pages.
"""

from __future__ import annotations

import os
import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "docs" / "examples"
PAGE = ROOT / "docs" / "examples.md"
SHARED_DATA = Path(os.environ.get("SKTRANSFER_DATA", ROOT.parent / "shared" / "data"))
# script -> data folder it needs (None: runs anywhere, offline)
EXAMPLES = {
    "feature_extraction_digits.py": None,
    "grid_search_freeze_depth.py": None,
    "finetune_hymenoptera_quick.py": SHARED_DATA / "hymenoptera",
}
# A printed decimal may move by a few units of its last digit (3 decimals are printed);
# one image more or less right (0.005 of 200, 0.025 of 40) is a real change and fails.
DECIMAL_TOLERANCE = 0.003
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")

_OUTPUT = re.compile(r"<!-- output: (\S+) -->\s*\n```text\n(.*?)^```", re.M | re.S)


def quoted_outputs() -> dict[str, str]:
    return {name: text for name, text in _OUTPUT.findall(PAGE.read_text())}


def same_output(printed: str, expected: str) -> bool:
    """Line by line: the same words and integers, decimals within ``DECIMAL_TOLERANCE``.

    >>> same_output("loss 0.301, 12 images", "loss 0.300, 12 images")
    True
    >>> same_output("loss 0.301, 12 images", "loss 0.310, 12 images")
    False
    """
    a, b = printed.strip().splitlines(), expected.strip().splitlines()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if _NUMBER.split(x) != _NUMBER.split(y):
            return False
        for u, v in zip(_NUMBER.findall(x), _NUMBER.findall(y)):
            decimal = "." in u or "." in v or "e" in u or "e" in v
            if (abs(float(u) - float(v)) > DECIMAL_TOLERANCE) if decimal else (u != v):
                return False
    return True


def test_every_example_is_on_the_page():
    quoted = quoted_outputs()
    page = PAGE.read_text()
    for name in EXAMPLES:
        assert (EXAMPLES_DIR / name).is_file(), name
        assert name in quoted, f"docs/examples.md quotes no output for {name}"
        assert f"python docs/examples/{name}" in page


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_prints_what_the_page_quotes(name, capsys, monkeypatch):
    data = EXAMPLES[name]
    if data is not None and not data.is_dir():
        pytest.skip(f"{name} reads {data}, which is absent")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runpy.run_path(str(EXAMPLES_DIR / name), run_name="__main__")
    printed = capsys.readouterr().out
    expected = quoted_outputs()[name]
    assert same_output(printed, expected), (
        f"{name} printed\n{printed}\nbut docs/examples.md quotes\n{expected}"
    )
