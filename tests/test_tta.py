"""Test-time augmentation (``FineTuneClassifier(tta=...)``): the averaged probabilities are
those of the views, computed by the estimator itself on the transformed images."""

from __future__ import annotations

import numpy as np
import pytest
from _tolerances import FP32_TOLERANCE
from torch import nn

from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier
from sktransfer.exceptions import InputError


def _spec():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
    )  # fmt: skip
    return BackboneSpec(module=net, data_config=DataConfig(input_size=16, resize_size=None))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    X[:12, :, :8] = 255  # left half bright: mirroring changes the evidence
    y = np.array([0] * 12 + [1] * 12)
    clf = FineTuneClassifier(
        _spec(), unfreeze=1, max_epochs=3, batch_size=8, validation_split=None,
        random_state=0, verbose=0, precision="fp32",
    ).fit(X, y)  # fmt: skip
    return clf, X


def test_flip_averages_the_image_and_its_mirror(fitted):
    clf, X = fitted
    plain = clf.set_params(tta="none").predict_proba(X)
    mirrored = clf.predict_proba(np.ascontiguousarray(X[:, :, ::-1]))
    flip = clf.set_params(tta="flip").predict_proba(X)
    np.testing.assert_allclose(flip, (plain + mirrored) / 2, **FP32_TOLERANCE)
    assert not np.allclose(flip, plain, **FP32_TOLERANCE)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[flip.argmax(1)])
    # binary: log p1 - log p0 of the averaged probabilities
    d = clf.decision_function(X)
    np.testing.assert_allclose(1 / (1 + np.exp(-d)), flip[:, 1], **FP32_TOLERANCE)
    clf.set_params(tta="none")


def test_flip_and_crops_are_probabilities_and_need_no_refit(fitted):
    clf, X = fitted
    history = len(clf.history_)
    proba = clf.set_params(tta="flip+crops").predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, **FP32_TOLERANCE)
    assert not np.allclose(proba, clf.set_params(tta="flip").predict_proba(X), **FP32_TOLERANCE)
    assert len(clf.history_) == history  # prediction only
    clf.set_params(tta="none")


def test_tta_with_memory_runs_the_images(fitted, tmp_path):
    clf, X = fitted
    cached = FineTuneClassifier(**{**clf.get_params(), "memory": str(tmp_path), "tta": "flip"})
    cached.fit(X, np.array([0] * 12 + [1] * 12))
    np.testing.assert_allclose(
        cached.predict_proba(X), clf.set_params(tta="flip").predict_proba(X), **FP32_TOLERANCE
    )
    clf.set_params(tta="none")


def test_bad_tta_values_are_refused(fitted):
    clf, X = fitted
    with pytest.raises(ValueError, match="tta"):
        FineTuneClassifier(tta="rotate").fit(X, np.array([0] * 12 + [1] * 12))


def test_tta_needs_an_image_backbone():
    texts = ["good film", "bad film", "great", "awful"] * 3
    y = np.array([1, 0, 1, 0] * 3)
    clf = FineTuneClassifier(
        "all-MiniLM-L6-v2", unfreeze=0, max_epochs=1, validation_split=None, verbose=0,
        random_state=0, tta="flip",
    ).fit(texts, y)  # fmt: skip
    with pytest.raises(InputError, match="tta='flip' needs an image backbone"):
        clf.predict(texts)
