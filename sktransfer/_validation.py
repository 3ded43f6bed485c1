"""Parameter and fitted-state checks shared by the estimators.

scikit-learn's ``_parameter_constraints`` machinery is private API; this is
the only module that touches it (pinned by the scikit-learn range in
pyproject.toml).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils._param_validation import (  # noqa: F401 - re-exported for the estimators
    HasMethods,
    Interval,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.validation import validate_data

from .exceptions import NotFittedError


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
