"""benchmarks/learning_curve.py: its core runs, end to end, on a tiny digits subset."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def learning_curve():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("learning_curve")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture
def one_thread():
    # Tiny 64 px batches: on a CPU shared with other jobs, two torch threads that wait
    # for each other made this test 20x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_nested_subset_is_stratified_and_nested(learning_curve):
    y = np.repeat(np.arange(3), [10, 20, 40])
    small = learning_curve.nested_subset(y, 0.1, seed=0)
    large = learning_curve.nested_subset(y, 0.5, seed=0)
    assert np.bincount(y[small]).tolist() == [1, 2, 4]
    assert np.bincount(y[large]).tolist() == [5, 10, 20]
    assert set(small) <= set(large)
    assert not np.array_equal(small, learning_curve.nested_subset(y, 0.1, seed=1))


def test_run_dataset_quick_digits(learning_curve, one_thread, tmp_path):
    results = learning_curve.run_dataset(
        "digits", fractions=(0.3, 1.0), seeds=(0,), epochs=1, quick=True, log=lambda msg: None
    )
    methods = set(learning_curve.METHODS)
    assert {(r["method"], r["fraction"]) for r in results} == {
        (m, f) for m in methods for f in (0.3, 1.0)
    }
    for r in results:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["n_test"] == learning_curve.QUICK["digits_test"]
        assert r["fit_s"] >= 0
    n_train = {r["fraction"]: r["n_train"] for r in results}
    assert n_train[0.3] < n_train[1.0] == learning_curve.QUICK["digits_train"]
    assert all(len(r["train_loss"]) == 1 for r in results if r["method"] != "feature_extraction")

    summary = learning_curve.summarize(results)
    assert len(summary) == len(results)
    table = learning_curve.format_table(summary)
    assert "from scratch" in table and "30%" in table
    png = tmp_path / "lc.png"
    learning_curve.plot(summary, results, png, "test")
    assert png.stat().st_size > 0
