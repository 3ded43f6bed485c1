"""LogME, the LogME scorer and rank_backbones.

LogME is checked against direct evaluations of its closed form (explicit inverse and
determinant, and the Gaussian marginal likelihood it equals), its fixed point against a
generic optimiser, and its ranking of real backbones/layers against linear-probe
accuracy (Kendall tau).
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import kendalltau, multivariate_normal
from sklearn.datasets import load_digits

from sktransfer.backbones import BackboneSpec, DataConfig, load_backbone
from sktransfer.exceptions import InputError
from sktransfer.metrics import (
    _evidence,
    _fixed_point,
    _svd_parts,
    _targets,
    logme_score,
    logme_scorer,
    make_logme_scorer,
    rank_backbones,
)

SHAPES = [(30, 50), (60, 8)]  # n < d and n > d


def naive_evidence(F, y, alpha, beta):
    """The paper's Eq. for one target column, with an explicit inverse and determinant."""
    n, d = F.shape
    A = alpha * np.eye(d) + beta * F.T @ F
    m = beta * np.linalg.inv(A) @ F.T @ y
    return (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * np.sum((y - F @ m) ** 2)
        - alpha / 2 * m @ m
        - np.log(np.linalg.det(A)) / 2
    )


def linear_task(n, d, seed, n_classes=3, noise=0.5):
    """Features and labels that depend on them (so the evidence has an interior maximum)."""
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(n, d))
    scores = F[:, :n_classes] * 3 + noise * rng.normal(size=(n, n_classes))
    return F, scores.argmax(axis=1)


@pytest.mark.parametrize("n, d", SHAPES)
def test_svd_evidence_equals_naive_closed_form(n, d):
    F, y = linear_task(n, d, seed=0)
    Y = _targets(y, regression=False)
    alphas = np.array([0.3, 2.0, 7.0])
    betas = np.array([4.0, 1.5, 0.2])
    ours = _evidence(*_svd_parts(F, Y), alphas, betas, n)
    for c in range(Y.shape[1]):
        naive = naive_evidence(F, Y[:, c], alphas[c], betas[c])
        # the same quantity as the log density of y ~ N(0, F F' / alpha + I / beta)
        cov = F @ F.T / alphas[c] + np.eye(n) / betas[c]
        marginal = multivariate_normal(np.zeros(n), cov).logpdf(Y[:, c])
        np.testing.assert_allclose(ours[c], naive, rtol=1e-9)
        np.testing.assert_allclose(ours[c], marginal, rtol=1e-9)


@pytest.mark.parametrize("n, d", SHAPES)
def test_fixed_point_is_the_maximum_of_the_evidence(n, d):
    F, y = linear_task(n, d, seed=0)  # interior maximum in every column
    Y = _targets(y, regression=False)
    parts = _svd_parts(F, Y)
    alpha, beta = _fixed_point(*parts, n)
    best = _evidence(*parts, alpha, beta, n)
    for fa in (0.97, 1.0, 1.03):
        for fb in (0.97, 1.0, 1.03):
            nearby = _evidence(*parts, alpha * fa, beta * fb, n)
            assert np.all(nearby <= best + 1e-9)
    # a generic optimiser on the naive formula finds the same maximum
    for c in range(Y.shape[1]):
        res = minimize(
            lambda p, c=c: -naive_evidence(F, Y[:, c], *np.exp(p)),
            x0=[0.0, 0.0],
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000},
        )
        np.testing.assert_allclose(-res.fun, best[c], rtol=1e-7)
    assert logme_score(F, y) == pytest.approx(best.mean() / n, rel=1e-12)


def test_features_unrelated_to_labels_give_the_noise_only_evidence():
    # Columns centred within each class are orthogonal to every one-hot label column:
    # the evidence then grows with alpha up to the model w = 0, y ~ N(0, I / beta).
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 10)
    F = rng.normal(size=(20, 30))
    for c in (0, 1):
        F[y == c] -= F[y == c].mean(axis=0)
    n = len(y)
    beta = n / 10  # maximum-likelihood precision: each one-hot column has 10 ones
    noise_only = n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi) - n / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or division warnings on the way
        assert logme_score(F, y) == pytest.approx(noise_only / n, rel=1e-9)


def test_logme_is_scale_invariant_and_handles_rank_deficient_features():
    # Scaling F by c is absorbed by alpha (the marginal likelihood is unchanged): a
    # numerically careless implementation drifts at large or small scales.
    F, y = linear_task(80, 20, seed=2)
    ref = logme_score(F, y)
    for scale in (1e-4, 1e4):
        assert logme_score(F * scale, y) == pytest.approx(ref, rel=1e-6)
    # Duplicated and constant columns (rank < d) only double F F', which alpha absorbs too.
    G = np.c_[F, F, np.zeros((80, 5))]
    assert logme_score(G, y) == pytest.approx(ref, rel=1e-6)
    assert np.isfinite(logme_score(np.c_[F, np.random.default_rng(0).normal(size=(80, 300))], y))


def test_logme_higher_for_informative_features_on_digits():
    digits = load_digits()
    X, y = digits.data, digits.target
    rng = np.random.default_rng(0)
    informative = logme_score(X, y)
    random_features = logme_score(rng.normal(size=X.shape), y)
    shuffled_labels = logme_score(X, rng.permutation(y))
    assert informative > random_features + 0.2
    assert informative > shuffled_labels + 0.2


def test_logme_regression_targets():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(100, 10))
    target = F @ rng.normal(size=10) + 0.1 * rng.normal(size=100)
    assert logme_score(F, target, regression=True) > logme_score(
        rng.normal(size=(100, 10)), target, regression=True
    )


def test_logme_input_errors():
    F = np.ones((4, 2))
    with pytest.raises(InputError, match="single class"):
        logme_score(F, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="inconsistent"):
        logme_score(F, [0, 1, 0])
    with pytest.raises(ValueError, match="NaN"):
        logme_score(np.array([[np.nan, 1.0], [0, 1], [1, 1]]), [0, 1, 0])
    with pytest.raises(ValueError, match="Unknown label type"):
        logme_score(F, [0.5, 1.5, 0.1, 0.2])


def test_scorer_on_transformers_and_pipelines():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    X, y = digits.data[:300], digits.target[:300]
    scaler = StandardScaler().fit(X)
    assert logme_scorer(scaler, X, y) == pytest.approx(logme_score(scaler.transform(X), y))
    # a pipeline ending with a classifier is scored on the features before its last step
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200))
    scores = cross_val_score(pipe, X, y, cv=2, scoring=logme_scorer)
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    with pytest.raises(TypeError, match="no transform"):
        logme_scorer(LogisticRegression().fit(X, y), X, y)
    assert "regression=True" in repr(make_logme_scorer(regression=True))
    # picklable, so that n_jobs > 1 searches can ship it to workers
    assert pickle.loads(pickle.dumps(logme_scorer))(scaler, X, y) == logme_scorer(scaler, X, y)


# ----------------------------------------------------------------------------- real backbones


def small_lite0(size=32):
    return BackboneSpec(
        arch="efficientnet_lite0",
        name=f"lite0@{size}",
        data_config=DataConfig(input_size=size, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3),
    )


def random_lite0(config):
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        bb = load_backbone("efficientnet_lite0", pretrained=False)
    bb.data_config = config
    return {"backbone": bb, "name": "efficientnet_lite0 (random init)"}


def test_rank_backbones_agrees_with_linear_probe_on_digits():
    """Fast variant: 120 digits at 32 px, 5 candidates (Lite0 layers and random weights).

    Measured: Kendall tau 0.80; both rank blocks.4 first (digits are far from ImageNet,
    so a middle layer transfers best at this size)."""
    digits = load_digits()
    X, y = digits.images[:120], digits.target[:120]
    lite = small_lite0(32)
    candidates = [(lite, "blocks.0"), (lite, "blocks.2"), (lite, "blocks.4"), (lite, None)]
    table = rank_backbones(
        X, y, [*candidates, random_lite0(lite.data_config)], cv=3,
        extractor_params={"batch_size": 60},  # fewer, larger batches: far less CPU at 32 px
    )  # fmt: skip
    assert len(table) == 5
    assert list(table.logme) == sorted(table.logme, reverse=True)
    assert {"backbone", "layer", "logme", "linear_probe_accuracy", "n_features", "seconds"} <= set(
        table.columns
    )
    assert table.set_index("layer").loc["blocks.0", "n_features"] == 16
    tau = kendalltau(table.logme, table.linear_probe_accuracy).statistic
    print(table.to_string(), f"\nKendall tau = {tau:.2f}")
    assert tau > 0
    assert table.linear_probe_accuracy.iloc[0] == table.linear_probe_accuracy.max()


@pytest.mark.slow
def test_rank_backbones_agrees_with_linear_probe_on_hymenoptera(hymenoptera):
    """80 photos (40 ants, 40 bees) at Lite0's own 224 px, 6 candidates.

    Measured: Kendall tau 0.87 (p = 0.017); the pretrained final layer is first by both
    (LogME -0.13, probe accuracy 0.94), random weights score like blocks.1-blocks.2."""
    from sktransfer.datasets import load_image_folder

    bunch = load_image_folder(hymenoptera / "train")
    X, y = np.asarray(bunch.data), np.asarray(bunch.target)
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 40, replace=False) for c in (0, 1)])
    name = "efficientnet_lite0"
    candidates = [(name, f"blocks.{i}") for i in (0, 1, 2, 4)] + [name]
    config = load_backbone(name, pretrained=False).data_config
    table = rank_backbones(X[idx], y[idx], [*candidates, random_lite0(config)])
    tau = kendalltau(table.logme, table.linear_probe_accuracy).statistic
    print(table.to_string(), f"\nKendall tau = {tau:.2f}")
    assert tau > 0.5
    assert (table.backbone.iloc[0], table.layer.iloc[0]) == (name, "final")
    assert table.linear_probe_accuracy.iloc[0] > 0.85


def test_logme_scorer_selects_a_layer_in_grid_search():
    from sklearn.model_selection import GridSearchCV

    from sktransfer import PretrainedFeatureExtractor

    digits = load_digits()
    search = GridSearchCV(
        PretrainedFeatureExtractor(small_lite0(32), batch_size=50),
        {"layer": ["blocks.0", "blocks.4"]},
        scoring=logme_scorer,
        cv=2,
    ).fit(digits.images[:60], digits.target[:60])
    assert search.best_params_ == {"layer": "blocks.4"}


def test_rank_backbones_candidate_errors():
    X, y = np.zeros((4, 8, 8)), [0, 1, 0, 1]
    with pytest.raises(InputError, match="without a 'backbone' key"):
        rank_backbones(X, y, [{"layer": "blocks.1"}])
    with pytest.raises(InputError, match="unknown keys"):
        rank_backbones(X, y, [{"backbone": "efficientnet_lite0", "lyer": 1}])
    with pytest.raises(InputError, match="expected \\(backbone, layer\\)"):
        rank_backbones(X, y, [("efficientnet_lite0", "blocks.1", "avg")])
    with pytest.raises(InputError, match="backbones is empty"):
        rank_backbones(X, y, [])
