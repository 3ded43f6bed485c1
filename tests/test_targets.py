"""Targets beyond single labels: ``FineTuneRegressor`` (1-D and multi-output, losses,
target scaling, scorers) and multi-label ``FineTuneClassifier`` (indicator matrices,
``threshold``, class weights), test-time augmentation and export of both, text
regression end to end; the slow acceptance runs on real photos (rotation angles and
two-photo collages) use the data builders of ``benchmarks/targets.py``."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score
from sklearn.model_selection import GridSearchCV
from torch import nn

from sktransfer import (
    BackboneSpec,
    DataConfig,
    FineTuneClassifier,
    FineTuneRegressor,
    export,
)
from sktransfer.exceptions import InputError
from sktransfer.serving import preprocess

sys.path.insert(0, str(Path(__file__).parent))
from _small_fits import small_fit  # noqa: E402
from _tolerances import FP32_TOLERANCE  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _spec(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1)
    )
    return BackboneSpec(module=net, data_config=DataConfig(input_size=16, resize_size=None))


def _small(estimator, **params):
    return small_fit(estimator, _spec(), **params)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images[:120], d.target[:120]


def _indicator(y):
    return np.stack([y % 2, y >= 5, y == 0], axis=1).astype(int)


@pytest.fixture(scope="module")
def gray_levels():
    """Noisy gray images whose target is their gray level (a task a small conv net with
    average pooling learns in a few epochs)."""
    rng = np.random.default_rng(0)
    level = rng.uniform(20, 230, size=96)
    noise = rng.integers(-15, 16, size=(96, 16, 16, 3))
    return np.clip(level[:, None, None, None] + noise, 0, 255).astype(np.uint8), level


@pytest.fixture(scope="module")
def colour_sets():
    """Images with a random subset of the channels (R, G, B) lit: the lit ones are the
    labels (an indicator matrix; empty and full sets included)."""
    rng = np.random.default_rng(0)
    Y = rng.integers(0, 2, size=(96, 3))
    noise = rng.integers(-20, 21, size=(96, 16, 16, 3))
    X = np.clip(np.where(Y[:, None, None, :] == 1, 200, 40) + noise, 0, 255).astype(np.uint8)
    return X, Y


# ----------------------------------------------------------------------------- regression


def test_regressor_predicts_in_the_units_of_y(gray_levels):
    X, level = gray_levels
    target = 1000.0 + 10.0 * level  # far from mean 0, scale 1
    reg = _small(FineTuneRegressor, max_epochs=15).fit(X, target)
    assert reg.target_type_ == "continuous" and reg.n_outputs_ == 1
    np.testing.assert_allclose(reg.target_mean_, [target.mean()])
    np.testing.assert_allclose(reg.target_scale_, [target.std()])
    pred = reg.predict(X)
    assert pred.shape == (len(X),) and pred.dtype == np.float64
    # the network's standardized outputs, mapped back
    raw = reg._outputs(X)[:, 0]
    np.testing.assert_allclose(pred, raw * target.std() + target.mean(), rtol=1e-6)
    # it learned the gray level, in the target's units
    assert reg.score(X, target) > 0.8
    assert np.mean(np.abs(pred - target)) < 0.5 * np.mean(np.abs(target - target.mean()))


def test_regressor_multi_output_and_a_constant_target(digits):
    X, y = digits
    Y = np.stack([y.astype(float), np.full(len(y), 7.0)], axis=1)
    reg = _small(FineTuneRegressor).fit(X, Y)
    assert reg.n_outputs_ == 2 and reg.target_type_ == "continuous-multioutput"
    assert reg.target_scale_[1] == 1.0  # a constant target keeps scale 1
    pred = reg.predict(X)
    assert pred.shape == (len(X), 2)
    with pytest.raises(InputError, match="fitted on 2"):
        reg.partial_fit(X, y.astype(float))


@pytest.mark.parametrize(
    "loss, criterion",
    [("squared_error", nn.MSELoss), ("absolute_error", nn.L1Loss), ("huber", nn.HuberLoss)],
)
def test_regressor_loss_is_the_one_asked_for(digits, loss, criterion):
    X, y = digits
    reg = _small(FineTuneRegressor, loss=loss, max_epochs=1).fit(X[:40], y[:40])
    assert type(reg.net_.criterion_) is criterion


def test_regressor_losses_train_differently(digits):
    X, y = digits
    y = y.astype(float)
    y[:5] = 500.0  # outliers: an absolute loss follows them less
    preds = [
        _small(FineTuneRegressor, loss=loss).fit(X, y).predict(X)
        for loss in ("squared_error", "absolute_error")
    ]
    assert not np.allclose(preds[0], preds[1])


def test_grid_search_with_a_regression_scorer(digits):
    X, y = digits
    search = GridSearchCV(
        _small(FineTuneRegressor, max_epochs=1),
        {"lr": [1e-3, 1e-2]},
        scoring="neg_mean_absolute_error",
        cv=2,
    ).fit(X[:60], y[:60].astype(float))
    assert search.best_score_ < 0  # a negated error
    assert search.best_params_["lr"] in (1e-3, 1e-2)
    assert search.predict(X[:4]).shape == (4,)


def test_regressor_validation_split_is_shuffled_and_checked(digits):
    X, y = digits
    reg = _small(FineTuneRegressor, unfreeze=1, validation_split=0.25, max_epochs=2).fit(X, y)
    assert np.isfinite(reg.history_[-1, "valid_loss"])
    assert "valid_acc" not in reg.history_[-1]  # no accuracy for continuous targets
    with pytest.raises(InputError, match="cannot split 1 sample"):
        _small(FineTuneRegressor, validation_split=0.5).fit(X[:1], y[:1])


def test_regressor_rejects_bad_targets(digits):
    X, y = digits
    with pytest.raises(InputError, match="X has 120 items but y has 119 targets"):
        _small(FineTuneRegressor).fit(X, y[:-1].astype(float))
    bad = y.astype(float)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _small(FineTuneRegressor).fit(X, bad)
    with pytest.raises(ValueError, match="requires y to be passed"):
        _small(FineTuneRegressor).fit(X, None)


def test_regressor_tta_is_the_mean_over_mirrored_images(digits):
    X, y = digits
    reg = _small(FineTuneRegressor).fit(X, y.astype(float))
    mirrored = X[:, :, ::-1].copy()
    expected = (reg.predict(X) + reg.predict(mirrored)) / 2
    np.testing.assert_allclose(reg.set_params(tta="flip").predict(X), expected, **FP32_TOLERANCE)


def test_regressor_checkpoints_are_keyed_by_the_float_targets(digits, tmp_path):
    X, y = digits

    def fit(X, y):
        return _small(FineTuneRegressor, checkpoint_dir=tmp_path, max_epochs=2).fit(X, y)

    first = fit(X, y * 1.0)
    other = fit(X, y**2.0)  # other targets: a fit of its own, never a resume
    assert len(list(tmp_path.glob("sktransfer-finetune-*.pt"))) == 2
    assert not np.allclose(other.predict(X), first.predict(X) ** 2)
    # The key is the standardized targets the network trains on: y * 3 + 5 is the same
    # training as y (same network), so it resumes, and predicts in its own units.
    again = fit(X, y * 3.0 + 5.0)
    assert len(list(tmp_path.glob("sktransfer-finetune-*.pt"))) == 2
    np.testing.assert_allclose(again.predict(X), first.predict(X) * 3 + 5, **FP32_TOLERANCE)


# ----------------------------------------------------------------------------- multi-label


def test_multilabel_indicator_api(colour_sets):
    X, Y = colour_sets
    clf = _small(FineTuneClassifier, max_epochs=12).fit(X, Y)
    assert clf.target_type_ == "multilabel-indicator"
    assert clf.classes_.tolist() == [0, 1, 2]
    assert type(clf.net_.criterion_).__name__ == "MultiLabelLoss"
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and ((proba >= 0) & (proba <= 1)).all()
    assert not np.allclose(proba.sum(axis=1), 1.0)  # per label, not a distribution
    pred = clf.predict(X)
    np.testing.assert_array_equal(pred, (proba >= 0.5).astype(int))
    logits = clf.decision_function(X)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), proba, rtol=1e-6)
    # it learned which channels are lit
    assert f1_score(Y, pred, average="samples", zero_division=1.0) > 0.9
    # threshold changes predict only: no refit
    net = clf.net_
    assert clf.set_params(threshold=0.0).predict(X).all()
    assert not clf.set_params(threshold=1.0).predict(X).any()
    assert clf.net_ is net


def test_multilabel_balanced_class_weight_sets_pos_weight(digits):
    X, y = digits
    Y = _indicator(y)
    clf = _small(FineTuneClassifier, class_weight="balanced", max_epochs=1).fit(X, Y)
    positives = Y.sum(axis=0)
    expected = (len(Y) - positives) / positives
    np.testing.assert_allclose(clf.net_.criterion_.pos_weight.numpy(), expected, rtol=1e-6)
    plain = _small(FineTuneClassifier, max_epochs=1).fit(X, Y)
    assert plain.net_.criterion_.pos_weight is None
    assert not np.allclose(clf.predict_proba(X), plain.predict_proba(X))
    with pytest.raises(InputError, match="class_weight as a dict"):
        _small(FineTuneClassifier, class_weight={0: 2.0}).fit(X, Y)


def test_multilabel_label_smoothing_changes_the_loss(digits):
    X, y = digits
    Y = _indicator(y)
    losses = [
        _small(FineTuneClassifier, label_smoothing=ls, max_epochs=1)
        .fit(X, Y)
        .history_[-1, "train_loss"]
        for ls in (0.0, 0.2)
    ]
    assert losses[0] != pytest.approx(losses[1])


def test_multilabel_validation_and_partial_fit(digits):
    X, y = digits
    Y = _indicator(y)
    clf = _small(FineTuneClassifier, unfreeze=1, validation_split=0.25, max_epochs=2).fit(X, Y)
    assert np.isfinite(clf.history_[-1, "valid_loss"])
    clf.partial_fit(X, Y)
    assert len(clf.history_) == 4
    with pytest.raises(InputError, match="multi-label"):
        clf.partial_fit(X, y)
    with pytest.raises(InputError, match="2 labels"):
        clf.partial_fit(X, Y[:, :2])


def test_multilabel_tta_averages_label_probabilities(digits):
    X, y = digits
    clf = _small(FineTuneClassifier).fit(X, _indicator(y))
    mirrored = X[:, :, ::-1].copy()
    expected = (clf.predict_proba(X) + clf.predict_proba(mirrored)) / 2
    np.testing.assert_allclose(
        clf.set_params(tta="flip").predict_proba(X), expected, **FP32_TOLERANCE
    )


def test_export_of_regressor_and_multilabel_matches_the_estimator(digits, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    X, y = digits
    reg = _small(FineTuneRegressor).fit(X, np.stack([y, 2 * y + 3], axis=1).astype(float))
    clf = _small(FineTuneClassifier).fit(X, _indicator(y))
    x = preprocess(clf, X[:8])
    for est, expected in ((reg, reg.predict(X[:8])), (clf, clf.predict_proba(X[:8]))):
        path = export(est, tmp_path / f"{type(est).__name__}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# ----------------------------------------------------------------------------- text


def test_text_regression_end_to_end(shared_data):
    pytest.importorskip("sentence_transformers")
    lines = (shared_data / "text" / "sst2" / "train.tsv").read_text().splitlines()[:64]
    texts = [line.split("\t", 1)[1] for line in lines]
    lengths = np.array([len(t.split()) for t in texts], dtype=float)
    reg = FineTuneRegressor(
        "all-MiniLM-L6-v2", max_epochs=1, validation_split=None, random_state=0, verbose=0
    ).fit(texts, lengths)
    pred = reg.predict(texts[:5])
    assert pred.shape == (5,) and np.isfinite(pred).all()
    assert reg.backbone_.modality == "text"


# ----------------------------------------------------------------------------- acceptance


@pytest.fixture(scope="module")
def targets_benchmark(shared_data):
    os.environ.setdefault("SKTRANSFER_DATA", str(shared_data))
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("targets")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_benchmark_data_builders(targets_benchmark, hymenoptera):
    paths, names = targets_benchmark.hymenoptera_split("val")
    images, angles = targets_benchmark.rotated_photos(paths[:3], seed=0)
    assert images.shape == (3, 256, 256, 3) and images.dtype == np.uint8
    assert ((-45 <= angles) & (angles <= 45)).all()
    again, _ = targets_benchmark.rotated_photos(paths[:3], seed=0)
    np.testing.assert_array_equal(images, again)  # seeded
    X, Y = targets_benchmark.collages(paths, names, 6, seed=0)
    assert X.shape == (6, 256, 256, 3)
    assert sorted(map(tuple, Y.tolist())) == [(0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="not met (docs/strategies.md): the sign of the angle is invisible to mirror-"
    "invariant ImageNet features; seed 0: mean 20.96, probe 20.97, unfreeze=2 21.15 MAE",
)
def test_rotation_regression_beats_the_probe_and_the_mean(targets_benchmark):
    rows = {r["model"]: r["mae"] for r in targets_benchmark.run_rotation(0, unfreezes=(2,))}
    assert rows["FineTuneRegressor(unfreeze=2)"] < rows["features + RidgeCV"] < rows["mean"]


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="not met (docs/strategies.md): seed 0, F1 samples probe 0.927, unfreeze=2 0.891",
)
def test_collage_multilabel_beats_the_one_vs_rest_probe(targets_benchmark):
    rows = {r["model"]: r["f1_samples"] for r in targets_benchmark.run_collage(0, unfreezes=(2,))}
    assert (
        rows["FineTuneClassifier(unfreeze=2)"] > rows["features + one-vs-rest LogisticRegression"]
    )


def test_grad_cam_explains_a_regressor_output(gray_levels):
    pytest.importorskip("captum")
    from sktransfer.explain import grad_cam

    X, level = gray_levels
    reg = _small(FineTuneRegressor).fit(X, np.stack([level, -level], axis=1))
    maps = grad_cam(reg, X[:4])  # the largest standardized output of each image
    assert maps.shape == (4, 16, 16) and np.isfinite(maps).all()
    assert ((maps >= 0) & (maps <= 1)).all()
    np.testing.assert_allclose(
        grad_cam(reg, X[:4], target=1)[0], grad_cam(reg, X[:1], 1)[0], **FP32_TOLERANCE
    )
    with pytest.raises(InputError, match="output index in 0..1"):
        grad_cam(reg, X[:4], target=2)


# ----------------------------------------------------------------------------- head_init


def _pooled_features(X):
    from sktransfer import PretrainedFeatureExtractor

    return PretrainedFeatureExtractor(_spec(), precision="fp32", verbose=0).fit_transform(X)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression"])
def test_head_init_probe_starts_at_the_linear_probe(digits, kind):
    """With a learning rate too small to move anything, the fitted model is its starting
    point: it must equal scikit-learn's linear model on the same pooled features."""
    from sklearn.linear_model import LogisticRegression, Ridge

    X, y = digits
    F = _pooled_features(X).astype(np.float64)
    frozen = dict(unfreeze=0, lr=1e-12, max_epochs=1, weight_decay=0.0, head_init="probe")
    if kind == "regression":
        model = _small(FineTuneRegressor, **frozen).fit(X, y * 10.0)
        expected = Ridge(alpha=1.0).fit(F, (y * 10.0 - y.mean() * 10) / (y.std() * 10))
        expected = expected.predict(F) * y.std() * 10 + y.mean() * 10
        np.testing.assert_allclose(model.predict(X), expected, rtol=1e-3, atol=1e-3)
        return
    if kind == "multilabel":
        Y = _indicator(y)
        model = _small(FineTuneClassifier, **frozen).fit(X, Y)
        expected = np.stack(
            [LogisticRegression(max_iter=1000).fit(F, Y[:, j]).predict_proba(F)[:, 1]
             for j in range(Y.shape[1])],
            axis=1,
        )  # fmt: skip
    else:
        target = (y % 2) if kind == "binary" else y
        model = _small(FineTuneClassifier, **frozen).fit(X, target)
        expected = LogisticRegression(max_iter=1000).fit(F, target).predict_proba(F)
    np.testing.assert_allclose(model.predict_proba(X), expected, atol=2e-3)
    random = _small(FineTuneClassifier, **{**frozen, "head_init": "random"})
    random.fit(X, Y if kind == "multilabel" else target)
    assert not np.allclose(random.predict_proba(X), expected, atol=2e-2)


def test_head_init_probe_leaves_mlp_heads_alone(digits):
    X, y = digits
    a = _small(FineTuneClassifier, head=8, max_epochs=1, head_init="probe").fit(X, y)
    b = _small(FineTuneClassifier, head=8, max_epochs=1, head_init="random").fit(X, y)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), **FP32_TOLERANCE)
