"""Parameter and fitted-state checks shared by the estimators.

scikit-learn's ``_parameter_constraints`` machinery is private API; this is
the only module that touches it (pinned by the scikit-learn range in
pyproject.toml).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import (  # noqa: F401 - re-exported for the estimators
    HasMethods,
    Interval,
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.validation import validate_data

from .exceptions import InputError, NotFittedError


def validate_params(estimator) -> None:
    """Check ``estimator.get_params(deep=False)`` against its ``_parameter_constraints``."""
    validate_parameter_constraints(
        estimator._parameter_constraints,
        estimator.get_params(deep=False),
        caller_name=type(estimator).__name__,
    )


def check_fitted(estimator, attribute: str) -> None:
    if not hasattr(estimator, attribute):
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
            "appropriate arguments before using this estimator."
        )


def is_fitted_name(name: str) -> bool:
    """Whether attribute ``name`` is fitted state by scikit-learn's convention (``coef_``,
    not ``_private`` nor a parameter)."""
    return name.endswith("_") and not name.startswith("_")


def _is_dataframe(X) -> bool:
    """A pandas or polars DataFrame (both carry column names sklearn records)."""
    return hasattr(X, "columns") and (hasattr(X, "iloc") or _is_polars(X))


def _is_polars(X) -> bool:
    return type(X).__module__.split(".")[0] == "polars"


def _numeric_dtype(dt) -> bool:
    if hasattr(dt, "is_numeric"):  # polars
        return bool(dt.is_numeric())
    return getattr(dt, "kind", "O") in "biuf"


def is_numeric_table(X) -> bool:
    """True for inputs sklearn would treat as a 2-D numeric table."""
    if _is_dataframe(X):
        return all(_numeric_dtype(dt) for dt in X.dtypes)
    if sp.issparse(X):  # validate_data then refuses it with sklearn's own message
        return True
    if isinstance(X, (str, bytes)) or not hasattr(X, "__len__"):
        return False
    if isinstance(X, np.ndarray):
        arr = X
    elif hasattr(X, "__array__") and not hasattr(X, "iloc") and not isinstance(X, (list, tuple)):
        arr = np.asarray(X)
    elif isinstance(X, (list, tuple)) and len(X) and isinstance(X[0], (list, tuple)):
        return True
    else:
        return False
    if arr.ndim != 2:
        return False
    # 2-D object arrays with several columns are numbers in disguise (sklearn's check_dtype_object)
    return arr.dtype.kind not in "OUS" or arr.shape[1] > 1


def check_input(estimator, X, *, reset: bool):
    """Record/check ``n_features_in_`` and ``feature_names_in_`` the sklearn way.

    A 2-D numeric table goes through ``validate_data`` (so dtype, NaN, sparse
    and feature-count errors are sklearn's own). Any other input is one column
    of images: ``n_features_in_ = 1`` and, for a one-column DataFrame, its name.
    """
    if is_numeric_table(X):
        return validate_data(estimator, X, reset=reset, dtype="numeric", ensure_all_finite=True)
    if _is_dataframe(X):
        validate_data(estimator, X, reset=reset, skip_check_array=True)
        return X
    if reset:
        estimator.n_features_in_ = 1
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    return X


def stratified_split(y, fraction: float, random_state, *, option: str, remedy: str):
    """Indices ``(train, valid)`` of a stratified split that holds out ``fraction`` of ``y``.

    Shared by :class:`~sktransfer.FineTuneClassifier` (``validation_split``) and the
    command line (``--validation-split``), so both refuse the same splits with the same
    words: every class needs 2+ samples, and each side of the split 1+ per class.
    ``option`` names the setting in the message, ``remedy`` says what to do.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1, 0, 1])
    >>> train, valid = stratified_split(y, 0.5, 0, option="validation_split=0.5", remedy="")
    >>> len(train), len(valid), sorted(set(y[valid].tolist())), sorted(set(y[train].tolist()))
    (3, 3, [0, 1], [0, 1])
    >>> stratified_split(np.array([0, 0, 1]), 0.5, 0, option="validation_split=0.5",
    ...                  remedy="Use validation_split=None.")
    Traceback (most recent call last):
    ...
    sktransfer.exceptions.InputError: validation_split=0.5 cannot hold out every class ...
    """
    y = np.asarray(y)
    names, counts = np.unique(y, return_counts=True)
    n_val = math.ceil(fraction * len(y))  # what train_test_split holds out
    if counts.min() < 2 or n_val < len(names) or len(y) - n_val < len(names):
        small = names[np.argmin(counts)]
        raise InputError(
            f"{option} cannot hold out every class (too small to stratify): {len(y)} samples, {len(names)} classes, "
            f"{counts.min()} sample(s) in class {small!r}, {n_val} to hold out. Each class "
            f"needs 2+ samples and each side of the split 1+ per class. {remedy}".rstrip()
        )
    return train_test_split(
        np.arange(len(y)), test_size=fraction, stratify=y, random_state=random_state
    )


def random_split(n: int, fraction: float, random_state, *, option: str, remedy: str):
    """Indices ``(train, valid)`` of a shuffled split that holds out ``fraction`` of ``n``
    items: for targets that cannot be stratified (regression, label sets).

    Examples
    --------
    >>> train, valid = random_split(10, 0.2, 0, option="validation_split=0.2", remedy="")
    >>> len(train), len(valid), sorted(train.tolist() + valid.tolist()) == list(range(10))
    (8, 2, True)
    >>> random_split(1, 0.5, 0, option="validation_split=0.5", remedy="Use more data.")
    Traceback (most recent call last):
    ...
    sktransfer.exceptions.InputError: validation_split=0.5 cannot split 1 sample(s) ...
    """
    n_val = math.ceil(fraction * n)
    if n_val < 1 or n - n_val < 1:
        raise InputError(
            f"{option} cannot split {n} sample(s) into a training and a validation part: "
            f"{n_val} to hold out, {n - n_val} to train on; each needs 1+. {remedy}".rstrip()
        )
    return train_test_split(np.arange(n), test_size=fraction, random_state=random_state)


def check_prefixed_params(estimator, params: dict, prefixes) -> None:
    """Refuse extra (``**kwargs``) parameters whose names lack one of ``prefixes``.

    Called by ``fit``, not ``__init__`` or ``set_params``: scikit-learn estimators store
    their parameters unchecked and validate them when fitting.
    """
    bad = sorted(k for k in params if not k.startswith(tuple(prefixes)))
    if bad:
        raise InvalidParameterError(
            f"{type(estimator).__name__} got unexpected parameters {bad}. Extra parameters "
            f"must be skorch parameters with one of the prefixes {list(prefixes)}."
        )
