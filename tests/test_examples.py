"""The example scripts in docs/examples/ run, and print what docs/examples.md quotes.

Each script listed in ``EXAMPLES`` runs in this process (``runpy``, as ``__main__``), its
stdout is captured, and the output block quoted for it in docs/examples.md (the ```text
block after ``<!-- output: NAME -->``) must equal it line for line: every number in the
page is one the script printed. Only the scripts listed here are run; other files in
docs/examples/ belong to other pages.
"""

from __future__ import annotations

import os
import re
import runpy
import time
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
TIME_BUDGET_S = 60.0  # all three together, on an idle 2-core CPU
_SECONDS: dict[str, float] = {}

_OUTPUT = re.compile(r"<!-- output: (\S+) -->\s*\n```text\n(.*?)^```", re.M | re.S)


def quoted_outputs() -> dict[str, str]:
    return {name: text for name, text in _OUTPUT.findall(PAGE.read_text())}


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
    start = time.perf_counter()
    runpy.run_path(str(EXAMPLES_DIR / name), run_name="__main__")
    _SECONDS[name] = time.perf_counter() - start
    printed = capsys.readouterr().out
    expected = quoted_outputs()[name]
    assert printed.strip().splitlines() == expected.strip().splitlines(), (
        f"{name} printed\n{printed}\nbut docs/examples.md quotes\n{expected}"
    )


def test_examples_fit_the_time_budget():
    ran = [name for name in EXAMPLES if name in _SECONDS]
    if not ran:
        pytest.skip("no example ran in this session")
    total = sum(_SECONDS.values())
    timings = ", ".join(f"{name} {_SECONDS[name]:.1f} s" for name in ran)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if total >= TIME_BUDGET_S and load > (os.cpu_count() or 1):
        pytest.skip(f"over budget ({timings}) while the machine is busy (load {load:.1f})")
    assert total < TIME_BUDGET_S, f"examples took {total:.1f} s: {timings}"
