"""Training curves of a fitted :class:`~sktransfer.FineTuneClassifier` in one call.

matplotlib is imported when a plot is drawn, not with the package (it comes with the
``explain`` and ``bench`` extras).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .exceptions import InputError, import_optional

__all__ = ["plot_history"]

# metric name -> history keys drawn for it, with their legend labels
_CURVES = {
    "loss": (("train_loss", "train loss"), ("valid_loss", "valid loss")),
    "accuracy": (("train_acc", "train accuracy"), ("valid_acc", "valid accuracy")),
}


def _history_of(estimator):
    history = getattr(estimator, "history_", None)
    if history is None:
        history = getattr(estimator, "history", None)  # a skorch net
    if history is None:
        raise InputError(
            f"plot_history needs a fitted FineTuneClassifier (or a skorch net); got "
            f"{type(estimator).__name__}, which has no history_."
        )
    return history


def _column(history, key: str) -> np.ndarray:
    """One float per epoch (NaN where the epoch did not record ``key``)."""
    return np.asarray([float(row.get(key, np.nan)) for row in history], dtype=float)


def plot_history(estimator, *, metrics: Sequence[str] = ("loss", "accuracy"), ax=None):
    """Plot the per-epoch training history of a fitted classifier.

    One panel per metric: ``"loss"`` draws the training loss and, when a validation
    set was used, the validation loss; ``"accuracy"`` draws the validation accuracy
    (skorch's ``valid_acc``) and the training accuracy if a callback recorded one
    (``train_acc``). Curves whose values were never recorded are left out; a panel
    with no curve says so in its title. The best epoch of the validation loss is
    marked (a dotted vertical line labelled ``"best epoch"``): the epoch whose
    weights early stopping restores.

    Parameters
    ----------
    estimator : FineTuneClassifier or skorch.NeuralNet
        A fitted estimator with ``history_`` (or a skorch net with ``history``).
    metrics : sequence of {"loss", "accuracy"}, default=("loss", "accuracy")
        The panels, left to right.
    ax : matplotlib Axes or sequence of Axes, optional
        Where to draw, one Axes per metric. By default a new figure with one row of
        panels is created.

    Returns
    -------
    list of matplotlib Axes
        One per metric, in the order of ``metrics``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from skorch.history import History
    >>> from sktransfer.plotting import plot_history
    >>> class Fitted:  # any object with a skorch history_ works
    ...     history_ = History([
    ...         {"epoch": 1, "train_loss": 1.2, "valid_loss": 1.0, "valid_acc": 0.5},
    ...         {"epoch": 2, "train_loss": 0.8, "valid_loss": 0.9, "valid_acc": 0.7},
    ...     ])
    >>> axes = plot_history(Fitted())
    >>> [line.get_label() for line in axes[0].get_lines()]
    ['train loss', 'valid loss']
    >>> axes[1].get_lines()[0].get_ydata().tolist()
    [0.5, 0.7]
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in _CURVES]
    if unknown or not metrics:
        raise InputError(f"metrics must name some of {list(_CURVES)}; got {list(metrics)}.")
    history = _history_of(estimator)
    if len(history) == 0:
        raise InputError("The history is empty: fit the estimator for at least one epoch first.")
    plt = import_optional(
        "matplotlib.pyplot",
        "plot_history needs matplotlib: pip install matplotlib (or sktransfer[explain]).",
    )

    if ax is None:
        _, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(np.atleast_1d(ax).ravel())
        if len(axes) != len(metrics):
            raise InputError(f"ax has {len(axes)} Axes but {len(metrics)} metrics were asked for.")

    epochs = _column(history, "epoch")
    if np.isnan(epochs).any():
        epochs = np.arange(1, len(history) + 1, dtype=float)
    for metric, axis in zip(metrics, axes):
        drawn = 0
        for key, label in _CURVES[metric]:
            values = _column(history, key)
            if np.isnan(values).all():
                continue
            axis.plot(epochs, values, marker="o", markersize=3, label=label)
            drawn += 1
        if metric == "loss":
            best = [i for i, row in enumerate(history) if row.get("valid_loss_best")]
            if best and drawn:
                axis.axvline(
                    epochs[best[-1]], color="grey", linestyle=":", linewidth=1, label="best epoch"
                )
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.set_title(metric if drawn else f"{metric}: not recorded")
        if drawn:
            axis.legend()
    return axes
