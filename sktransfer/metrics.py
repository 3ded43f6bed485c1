"""Transferability: how well a backbone's features fit labelled data, before any training.

:func:`logme_score` is LogME (You, Liu, Wang and Long, "LogME: Practical
Assessment of Pre-trained Models for Transfer Learning", ICML 2021): the
log marginal likelihood (evidence) of a Bayesian linear model from the
features to each one-hot label column, with the prior and noise precisions
set by evidence maximisation, averaged over the columns and divided by the
number of samples. Higher is better. It needs one SVD of the features and no
training, so it ranks backbones and layers in the time one feature
extraction takes.

:func:`rank_backbones` extracts features of the same images with several
candidates and tabulates LogME next to the cheap, familiar baseline: the
cross-validated accuracy of a logistic regression on the features (a
*linear probe*). :data:`logme_scorer` makes LogME a scikit-learn scorer, so
``GridSearchCV(PretrainedFeatureExtractor(), {"layer": [...]}, scoring=logme_scorer)``
selects a layer without training a classifier.

Model and formulas
------------------
For features ``F`` (n x D) and one target column ``y`` (n), with
``w ~ N(0, alpha^-1 I)`` and ``y | F, w ~ N(F w, beta^-1 I)``, the log evidence is

    L(alpha, beta) = D/2 log alpha + n/2 log beta - n/2 log(2 pi)
                     - beta/2 ||y - F m||^2 - alpha/2 m'm - 1/2 log|A|,

with ``A = alpha I + beta F'F`` and ``m = beta A^-1 F'y``. With the SVD
``F = U S V'``, ``sigma = S^2`` and ``x = U'y`` every term is a sum over the
``k = min(n, D)`` singular values (the ``D - k`` zero eigenvalues of ``F'F``
add ``(D - k) log alpha`` to ``log|A|``, which cancels with ``D/2 log alpha``),
and the maximum over
``(alpha, beta)`` is found with the paper's fixed point (MacKay's):

    gamma = sum(beta sigma / (alpha + beta sigma)),
    alpha = gamma / m'm,  beta = (n - gamma) / ||y - F m||^2.

All label columns are iterated together (vectorised over classes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.utils import check_array, check_consistent_length, column_or_1d
from sklearn.utils.multiclass import check_classification_targets

from .exceptions import InputError, import_optional

__all__ = ["logme_score", "rank_backbones", "make_logme_scorer", "logme_scorer", "LogMEScorer"]

_TINY = 1e-12


# --------------------------------------------------------------------------- LogME


def _targets(y, regression: bool) -> np.ndarray:
    """Label columns (n, C): one-hot for classification, the values for regression."""
    if regression:
        Y = np.asarray(y, dtype=np.float64)
        if Y.ndim == 1:
            Y = Y[:, None]
        if Y.ndim != 2:
            raise InputError(f"y must be 1-D or 2-D for regression; got shape {Y.shape}.")
        if not np.isfinite(Y).all():
            raise InputError("y contains NaN or infinite values.")
        return Y
    y = column_or_1d(y, warn=True)
    check_classification_targets(y)
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"y has a single class ({classes[0]!r}); LogME needs at least 2 classes.")
    Y = np.zeros((len(y), len(classes)))
    Y[np.arange(len(y)), codes] = 1.0
    return Y


def _svd_parts(F: np.ndarray, Y: np.ndarray):
    """``sigma`` (k), ``x2 = (U'Y)^2`` (k, C) and the squared norm of the part of each
    column of ``Y`` outside the column space of ``F`` (C): all LogME needs from the data."""
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    X = U.T @ Y
    # Computed as a residual (not ||y||^2 - ||x||^2) so that it stays >= 0 and exact.
    outside = ((Y - U @ X) ** 2).sum(axis=0)
    return s**2, X**2, outside


def _evidence(sigma, x2, outside, alpha, beta, n: int) -> np.ndarray:
    """Log evidence L(alpha, beta) of each column, from the SVD parts (vectorised over columns).

    ``alpha`` and ``beta`` have one value per column. Written with
    ``D/2 log alpha - 1/2 log|A| = -1/2 sum(log1p(beta sigma / alpha))``, so that it
    stays exact when ``alpha`` is huge (features that do not explain a column).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    lam = alpha / beta
    s = sigma[:, None]
    m2 = (s * x2 / (lam + s) ** 2).sum(axis=0)
    res2 = ((lam / (lam + s)) ** 2 * x2).sum(axis=0) + outside
    return (
        n / 2 * np.log(beta)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - np.log1p(s / lam).sum(axis=0) / 2
    )


def _fixed_point(sigma, x2, outside, n: int, *, max_iter: int = 500, tol: float = 1e-10):
    """Evidence-maximising ``(alpha, beta)`` per column (the paper's fixed point, vectorised).

    When the features do not explain a column the evidence grows with ``alpha``
    up to the noise-only model (``w = 0``); ``alpha / beta`` is then capped where
    the remaining difference is below float precision.
    """
    c = x2.shape[1]
    s = sigma[:, None]
    lam_max = 1e16 * max(float(sigma.max(initial=0.0)), _TINY)
    alpha = np.ones(c)
    beta = np.ones(c)
    for _ in range(max_iter):
        lam = alpha / beta
        gamma = (s / (s + lam)).sum(axis=0)  # effective number of parameters
        m2 = (s * x2 / (s + lam) ** 2).sum(axis=0)
        res2 = ((lam / (s + lam)) ** 2 * x2).sum(axis=0) + outside
        beta = np.maximum(n - gamma, _TINY) / np.maximum(res2, _TINY)
        # m'm = 0 (no column-space component): alpha -> infinity, capped below
        alpha = np.divide(gamma, m2, out=np.full(c, np.inf), where=m2 > 0)
        alpha = np.clip(alpha, _TINY * beta, lam_max * beta)
        if np.all(np.abs(alpha / beta - lam) <= tol * lam):
            break
    return alpha, beta


def logme_score(X_features, y, *, regression: bool = False) -> float:
    """LogME of features for labels: higher means the features suit the task better.

    The average over label columns (one-hot classes) of the maximised log
    evidence of a Bayesian linear regression from the features, divided by the
    number of samples (You et al., ICML 2021). Values are comparable between
    feature sets for the same ``y``; they do not depend on a train/test split.

    Parameters
    ----------
    X_features : array-like of shape (n_samples, n_features)
        Features, e.g. the output of a
        :class:`~sktransfer.PretrainedFeatureExtractor`. Used as they are
        (LogME's model has no intercept and no scaling).
    y : array-like of shape (n_samples,) or (n_samples, n_targets)
        Class labels, or real targets with ``regression=True``.
    regression : bool, default=False
        Treat ``y`` as real-valued targets instead of class labels.

    Returns
    -------
    float

    See Also
    --------
    rank_backbones : LogME and linear-probe accuracy of several backbones or layers.
    make_logme_scorer : LogME as a scikit-learn scorer.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 20)
    >>> informative = np.eye(3)[y] + 0.3 * rng.normal(size=(60, 3))
    >>> noise = rng.normal(size=(60, 3))
    >>> bool(logme_score(informative, y) > logme_score(noise, y))
    True
    """
    F = check_array(X_features, dtype=np.float64, ensure_min_samples=2)
    Y = _targets(y, regression)
    check_consistent_length(F, Y)
    n = F.shape[0]
    sigma, x2, outside = _svd_parts(F, Y)
    alpha, beta = _fixed_point(sigma, x2, outside, n)
    return float(np.mean(_evidence(sigma, x2, outside, alpha, beta, n)) / n)


# --------------------------------------------------------------------------- scorer


class LogMEScorer:
    """A scikit-learn scorer: LogME of the features an estimator produces for ``X``.

    ``scorer(estimator, X, y)`` transforms ``X`` with ``estimator`` (a
    transformer, or a pipeline: all its steps when the last one transforms,
    else all but the last) and returns :func:`logme_score` of the result.
    Made by :func:`make_logme_scorer`.

    Parameters
    ----------
    regression : bool, default=False
        Real-valued targets instead of class labels.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.decomposition import PCA
    >>> from sktransfer.metrics import LogMEScorer, logme_score
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20)
    >>> X = np.c_[y + 0.3 * rng.normal(size=40), rng.normal(size=(40, 3))]
    >>> pca = PCA(n_components=2).fit(X)
    >>> LogMEScorer()(pca, X, y) == logme_score(pca.transform(X), y)
    True
    """

    def __init__(self, regression: bool = False):
        self.regression = regression

    def __call__(self, estimator, X, y, **kwargs) -> float:
        return logme_score(_features_of(estimator, X), y, regression=self.regression)

    def __repr__(self) -> str:
        return f"make_logme_scorer(regression={self.regression})"


def _features_of(estimator, X):
    if hasattr(estimator, "transform"):
        return estimator.transform(X)
    steps = getattr(estimator, "steps", None)
    if steps is not None and len(steps) > 1:
        return estimator[:-1].transform(X)
    raise TypeError(
        f"LogME scores features, but {type(estimator).__name__} has no transform. Use a "
        "transformer such as PretrainedFeatureExtractor, or a Pipeline whose steps before the "
        "last one produce features."
    )


def make_logme_scorer(*, regression: bool = False) -> LogMEScorer:
    """LogME as a scorer for ``scoring=`` in ``GridSearchCV``, ``cross_validate``...

    Parameters
    ----------
    regression : bool, default=False
        Real-valued targets instead of class labels.

    Returns
    -------
    LogMEScorer
        A picklable callable ``scorer(estimator, X, y) -> float`` (higher is better).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import StandardScaler
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 30)
    >>> X = np.c_[y + 0.2 * rng.normal(size=60), rng.normal(size=60)]
    >>> scorer = make_logme_scorer()
    >>> round(scorer(StandardScaler().fit(X), X, y), 3) == round(
    ...     logme_score(StandardScaler().fit_transform(X), y), 3)
    True
    """
    return LogMEScorer(regression=regression)


logme_scorer = make_logme_scorer()
"""LogME scorer for classification: ``GridSearchCV(..., scoring=logme_scorer)``."""


# --------------------------------------------------------------------------- ranking


def _candidate(spec, index: int) -> tuple[str, Any, dict]:
    """``(display name, layer, extractor parameters)`` of one candidate."""
    from .extraction import PretrainedFeatureExtractor

    if isinstance(spec, PretrainedFeatureExtractor):
        params = clone(spec).get_params(deep=False)
        name = None
    elif isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if "backbone" not in params:
            raise InputError(
                f"Candidate {index} is a dict without a 'backbone' key: {sorted(spec)}. Use e.g. "
                "{'backbone': 'efficientnet_lite0', 'layer': 'blocks.4'}."
            )
    elif isinstance(spec, tuple):
        if len(spec) != 2:
            raise InputError(
                f"Candidate {index} is a tuple of length {len(spec)}; expected (backbone, layer)."
            )
        params = {"backbone": spec[0], "layer": spec[1]}
        name = None
    else:
        params = {"backbone": spec}
        name = None
    valid = PretrainedFeatureExtractor().get_params(deep=False)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise InputError(
            f"Candidate {index} has unknown keys {unknown}; expected 'name' and "
            f"PretrainedFeatureExtractor parameters {sorted(valid)}."
        )
    if name is None:
        backbone = params["backbone"]
        name = backbone if isinstance(backbone, str) else getattr(backbone, "name", None)
        name = str(name or type(backbone).__name__)
    return name, params.get("layer"), params


def _linear_probe(F, y, cv: int, random_state) -> tuple[float, float]:
    """Mean and std of the cross-validated accuracy of a logistic regression on ``F``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_splits = min(cv, int(np.unique(y, return_counts=True)[1].min()))
    if n_splits < 2:
        return float("nan"), float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
    scores = cross_val_score(probe, F, y, cv=folds)
    return float(scores.mean()), float(scores.std())


def rank_backbones(
    X,
    y,
    backbones: Iterable = ("efficientnet_lite0",),
    *,
    linear_probe: bool = True,
    cv: int = 5,
    random_state: int | None = 0,
    extractor_params: Mapping[str, Any] | None = None,
):
    """Score several backbones or layers on the same labelled images; best first.

    Each candidate's features are extracted with a
    :class:`~sktransfer.PretrainedFeatureExtractor` and scored with
    :func:`logme_score` and, as a baseline, the cross-validated accuracy of a
    standardised logistic regression on them (a linear probe).

    Parameters
    ----------
    X : images
        Anything :class:`~sktransfer.PretrainedFeatureExtractor` accepts.
    y : array-like of shape (n_samples,)
        Class labels.
    backbones : iterable of candidates, default=("efficientnet_lite0",)
        Each candidate is a backbone (a name, checkpoint path, ``nn.Module`` or
        :class:`~sktransfer.BackboneSpec`), a ``(backbone, layer)`` tuple, a
        dict of extractor parameters (``{"backbone": ..., "layer": ...,
        "pooling": ...}``, plus an optional display ``"name"``), or an
        unfitted :class:`~sktransfer.PretrainedFeatureExtractor`.
    linear_probe : bool, default=True
        Also compute the linear-probe accuracy (slower than LogME on large data).
    cv : int, default=5
        Folds of the linear probe (fewer when a class is smaller).
    random_state : int or None, default=0
        Shuffling of the probe's folds.
    extractor_params : dict, optional
        Extractor parameters shared by all candidates (``batch_size``,
        ``device``, ``precision``, ``memory``...); a candidate's own win.

    Returns
    -------
    pandas.DataFrame
        One row per candidate, sorted by ``logme``, descending, with columns
        ``backbone`` (display name), ``layer``, ``logme``,
        ``linear_probe_accuracy``, ``linear_probe_std``, ``n_features``,
        ``seconds`` (feature extraction plus LogME) and ``probe_seconds``.

    See Also
    --------
    logme_score

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer.backbones import BackboneSpec, DataConfig
    >>> digits = load_digits()
    >>> small = BackboneSpec(arch="efficientnet_lite0", name="lite0@32",
    ...                      data_config=DataConfig(input_size=32, resize_size=None,
    ...                                             mean=(0.5,) * 3, std=(0.5,) * 3))
    >>> table = rank_backbones(digits.images[:60], digits.target[:60],
    ...                        [(small, "blocks.1"), (small, None)], cv=3)
    >>> list(table.columns[:5])
    ['backbone', 'layer', 'logme', 'linear_probe_accuracy', 'linear_probe_std']
    """
    pd = import_optional(
        "pandas", "rank_backbones returns a pandas DataFrame: pip install sktransfer[pandas]"
    )
    from .extraction import PretrainedFeatureExtractor

    if isinstance(backbones, (str, Mapping)) or not isinstance(backbones, Iterable):
        backbones = [backbones]
    candidates = [_candidate(spec, i) for i, spec in enumerate(backbones)]
    if not candidates:
        raise InputError("backbones is empty; give at least one candidate.")
    if not isinstance(cv, Integral) or cv < 2:
        raise InputError(f"cv must be an int >= 2, got {cv!r}.")
    y = column_or_1d(y)
    check_classification_targets(y)

    rows = []
    for name, layer, params in candidates:
        start = time.perf_counter()
        extractor = PretrainedFeatureExtractor(**{**dict(extractor_params or {}), **params})
        F = extractor.fit(X).transform(X)
        if len(F) != len(y):
            raise InputError(f"X has {len(F)} items but y has {len(y)} labels; they must match.")
        logme = logme_score(F, y)
        seconds = time.perf_counter() - start
        acc = std = probe_seconds = float("nan")
        if linear_probe:
            start = time.perf_counter()
            acc, std = _linear_probe(F, y, int(cv), random_state)
            probe_seconds = time.perf_counter() - start
        rows.append(
            {
                "backbone": name,
                "layer": "final" if layer is None else layer,
                "logme": logme,
                "linear_probe_accuracy": acc,
                "linear_probe_std": std,
                "n_features": F.shape[1],
                "seconds": seconds,
                "probe_seconds": probe_seconds,
            }
        )
    table = pd.DataFrame(rows)
    return table.sort_values("logme", ascending=False, kind="stable").reset_index(drop=True)
