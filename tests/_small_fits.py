"""Small, fast fine-tuning estimators for tests: a tiny spec, fp32, no workers, fixed seed
(imported by name, like ``_tolerances``)."""

# A few epochs at a high rate on tiny inputs: seconds per fit, enough to learn toy data.
SMALL_FIT = {
    "max_epochs": 3,
    "batch_size": 16,
    "validation_split": None,
    "precision": "fp32",
    "num_workers": 0,
    "random_state": 0,
    "verbose": 0,
    "lr": 1e-2,
}


def small_fit(estimator, spec, **params):
    """``estimator(spec, ...)`` with :data:`SMALL_FIT`, overridden by ``params``."""
    return estimator(spec, **{**SMALL_FIT, **params})
