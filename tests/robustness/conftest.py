"""Robustness suite: generated corpora of bad and odd inputs, property-based tests.

Every case tried is counted; the count is printed at the end of the run.
"""

from __future__ import annotations

import collections

import pytest

CASES: collections.Counter = collections.Counter()


@pytest.fixture
def count_case():
    """Call with a category name for each input case a test tries."""

    def count(category: str, n: int = 1) -> None:
        CASES[category] += n

    return count


def pytest_terminal_summary(terminalreporter):
    if CASES:
        total = sum(CASES.values())
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(CASES.items()))
        terminalreporter.write_line(f"robustness cases tried: {total} ({parts})")
