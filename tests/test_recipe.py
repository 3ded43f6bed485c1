"""FineTuneClassifier's training recipe: learning-rate schedules and label smoothing.

Small fits (24 images of 48 px at 64 px input, batch 8: 3 batches per epoch) with the
bundled Lite0 weights, as in test_finetune.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError
from skorch.callbacks import Callback, LRScheduler
from test_finetune import SMALL, _images  # the same small Lite0 and striped images

from sktransfer import FineTuneClassifier

LR, SCALE = 1e-2, 0.1
STEPS = 3  # batches per epoch


class RecordGroupLrs(Callback):
    """Reads the optimizer's learning rate of every parameter group before each batch."""

    def __init__(self):
        self.lrs = []

    def initialize(self):
        self.lrs = []
        return self

    def on_batch_begin(self, net, training=None, **kwargs):
        if training:
            self.lrs.append([g["lr"] for g in net.optimizer_.param_groups])


def _fit(**kw):
    rec = RecordGroupLrs()
    params = dict(
        backbone=SMALL,
        unfreeze=1,
        lr=LR,
        backbone_lr_scale=SCALE,
        max_epochs=3,
        batch_size=8,
        verbose=0,
        random_state=0,
        validation_split=None,
        early_stopping=False,
        precision="fp32",
        callbacks=[("record", rec)],
    )
    params.update(kw)
    clf = FineTuneClassifier(**params).fit(*_images())
    return clf, rec.lrs


def _cosine(k, n):
    return 0.5 * (1 + math.cos(math.pi * k / n))


def test_cosine_decays_every_group_per_batch():
    clf, lrs = _fit(lr_schedule="cosine")
    n = 3 * STEPS
    assert isinstance(
        clf.net_.callbacks_[[c[0] for c in clf.net_.callbacks_].index("lr_scheduler")][1],
        LRScheduler,
    )
    expected = [[LR * _cosine(k, n), LR * SCALE * _cosine(k, n)] for k in range(n)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    # the history's event_lr is the head's rate of each batch
    hist = [lr for epoch in clf.history_[:, "batches"] for lr in (b["event_lr"] for b in epoch)]
    np.testing.assert_allclose(hist, [e[0] for e in expected], rtol=1e-6)
    assert lrs[-1][0] < 0.05 * LR


def test_onecycle_rises_then_decays():
    _, lrs = _fit(lr_schedule="onecycle", max_epochs=4)
    head = np.array([g[0] for g in lrs])
    n = 4 * STEPS
    peak = int(np.argmax(head))
    assert head[0] == pytest.approx(LR / 25, rel=1e-6)
    assert head[peak] == pytest.approx(LR, rel=1e-6)
    assert 0 < peak < n // 2
    assert np.all(np.diff(head[: peak + 1]) > 0) and np.all(np.diff(head[peak:]) < 0)
    np.testing.assert_allclose([g[1] for g in lrs], head * SCALE, rtol=1e-6)


def test_warmup_is_constant_then_schedule_spans_the_rest():
    clf, lrs = _fit(lr_schedule="cosine", warmup_epochs=1, max_epochs=3)
    # warm-up: the head at the constant lr
    assert [g[0] for g in lrs[:STEPS]] == [LR] * STEPS
    # then head and backbone, cosine over the remaining 2 epochs from the base rates
    n = 2 * STEPS
    expected = [[LR * _cosine(k, n), LR * SCALE * _cosine(k, n)] for k in range(n)]
    np.testing.assert_allclose(lrs[STEPS:], expected, rtol=1e-6)
    assert len(clf.net_.optimizer_.param_groups) == 2


def test_constant_schedule_keeps_the_rates():
    clf, lrs = _fit(lr_schedule="constant", max_epochs=2)
    assert "lr_scheduler" not in dict(clf.net_.callbacks_)
    assert lrs == [[LR, LR * SCALE]] * (2 * STEPS)


def test_partial_fit_starts_a_new_cycle():
    clf, lrs = _fit(lr_schedule="cosine", max_epochs=2)
    assert lrs[-1][0] < 0.2 * LR
    clf.partial_fit(*_images())
    rec = dict(clf.net_.callbacks_)["record"]
    # the recorder re-initializes with the net only on fit; partial_fit appends
    again = rec.lrs[-2 * STEPS :]
    n = 2 * STEPS
    np.testing.assert_allclose(
        [g[0] for g in again], [LR * _cosine(k, n) for k in range(n)], rtol=1e-6
    )


def test_label_smoothing_reaches_the_loss():
    plain, _ = _fit(max_epochs=1)
    smooth, _ = _fit(max_epochs=1, label_smoothing=0.2)
    assert smooth.net_.criterion_.label_smoothing == pytest.approx(0.2)
    # same init, same batches: the first batch's loss is the smoothed cross-entropy of
    # the same logits, (1 - eps) * CE + eps * mean over classes of -log p
    first = [c.history_[0, "batches", 0, "train_loss"] for c in (plain, smooth)]
    assert first[0] != pytest.approx(first[1], rel=1e-6)
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    target = torch.tensor([0, 1])
    logp = logits.log_softmax(1)
    manual = (0.8 * -logp[[0, 1], target] + 0.2 * -logp.mean(1)).mean()
    assert float(smooth.net_.criterion_(logits, target)) == pytest.approx(float(manual), rel=1e-6)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
    ],
)
def test_recipe_parameters_are_validated(params, match):
    with pytest.raises(InvalidParameterError, match=match):
        FineTuneClassifier(backbone=SMALL, verbose=0, **params).fit(*_images())


def test_own_lr_scheduler_needs_a_constant_schedule():
    from sktransfer.exceptions import InputError

    own = [("cosine", LRScheduler(policy="CosineAnnealingLR", T_max=2))]
    with pytest.raises(InputError, match="lr_schedule='constant'"):
        _fit(lr_schedule="onecycle", callbacks=own, max_epochs=1)
    clf, lrs = _fit(lr_schedule="constant", callbacks=own + [("record", RecordGroupLrs())])
    assert "lr_scheduler" not in dict(clf.net_.callbacks_)
