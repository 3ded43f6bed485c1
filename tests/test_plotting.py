"""plot_history draws a fitted FineTuneClassifier's training curves in one call."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from sklearn.datasets import load_digits

from sktransfer import FineTuneClassifier
from sktransfer.exceptions import InputError, NotFittedError
from sktransfer.plotting import plot_history

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    digits = load_digits()
    X, y = digits.images[:40], digits.target[:40] % 2  # 2 classes, 20 images each
    clf = FineTuneClassifier(  # a fixed depth keeps the hold-out (see unfreeze="auto")
        unfreeze=1, max_epochs=2, validation_split=0.25, early_stopping=False, verbose=0,
        random_state=0,
    )
    return clf.fit(X, y)


def test_history_has_the_keys_plotted(fitted):
    assert len(fitted.history_) == 2
    for key in ("epoch", "train_loss", "valid_loss", "valid_acc"):
        assert all(key in row for row in fitted.history_), key


def test_method_draws_losses_and_valid_accuracy(fitted):
    axes = fitted.plot_history()
    try:
        assert len(axes) == 2
        loss, acc = axes
        labels = [line.get_label() for line in loss.get_lines()]
        assert labels[:2] == ["train loss", "valid loss"]
        train = loss.get_lines()[0]
        assert train.get_xdata().tolist() == [1, 2]
        np.testing.assert_allclose(train.get_ydata(), fitted.history_[:, "train_loss"])
        np.testing.assert_allclose(
            loss.get_lines()[1].get_ydata(), fitted.history_[:, "valid_loss"]
        )
        assert [line.get_label() for line in acc.get_lines()] == ["valid accuracy"]
        np.testing.assert_allclose(acc.get_lines()[0].get_ydata(), fitted.history_[:, "valid_acc"])
        assert loss.get_xlabel() == "epoch" and acc.get_ylabel() == "accuracy"
        assert loss.get_legend() is not None
    finally:
        plt.close("all")


def test_draws_into_given_axes_and_one_metric(fitted):
    fig, ax = plt.subplots()
    try:
        (out,) = plot_history(fitted, metrics=("loss",), ax=ax)
        assert out is ax
        with pytest.raises(InputError, match="2 metrics"):
            plot_history(fitted, ax=ax)
        with pytest.raises(InputError, match="metrics must name"):
            plot_history(fitted, metrics=("f1",))
    finally:
        plt.close(fig)


def test_without_validation_only_train_loss(fitted):
    class NoValid:
        history_ = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]

    axes = plot_history(NoValid())
    try:
        assert [line.get_label() for line in axes[0].get_lines()] == ["train loss"]
        assert axes[1].get_lines() == [] and "not recorded" in axes[1].get_title()
    finally:
        plt.close("all")


def test_unfitted_raises():
    with pytest.raises(NotFittedError):
        FineTuneClassifier().plot_history()
    with pytest.raises(InputError, match="no history_"):
        plot_history(object())
