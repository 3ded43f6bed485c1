"""Own-model transfer: a network trained on one task is the backbone of another.

Digits 0-4 -> digits 5-9 (sklearn's load_digits, offline): a small CNN trained
from scratch on the first task gives better features for the second task than
the same CNN with random weights.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from torch import nn

from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier, PretrainedFeatureExtractor

CONFIG = DataConfig(input_size=8, resize_size=None, mean=(0.5,), std=(0.5,), in_chans=1)


def _cnn(seed=0):
    torch.manual_seed(seed)  # the random-init baseline is reproducible too
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
    )  # fmt: skip


def test_digits_0_4_to_5_9_transfer():
    d = load_digits()
    first = d.target < 5
    source = FineTuneClassifier(
        BackboneSpec(module=_cnn(), data_config=CONFIG), pretrained=False, unfreeze="all",
        lr=3e-3, max_epochs=12, batch_size=64, validation_split=None, random_state=0, verbose=0,
    ).fit(d.images[first], d.target[first])  # fmt: skip
    X, y = d.images[~first], d.target[~first]
    # few labels on the new task: that is where transfer pays
    Xtr, Xte, ytr, yte = train_test_split(X, y, train_size=50, stratify=y, random_state=0)
    transferred = make_pipeline(
        PretrainedFeatureExtractor(source.backbone_, layer=6), LogisticRegression(max_iter=3000)
    ).fit(Xtr, ytr)
    random_init = make_pipeline(
        PretrainedFeatureExtractor(BackboneSpec(module=_cnn(), data_config=CONFIG), layer=6),
        LogisticRegression(max_iter=3000),
    ).fit(Xtr, ytr)
    acc_t, acc_r = transferred.score(Xte, yte), random_init.score(Xte, yte)
    print(f"digits 0-4 -> 5-9 with 50 labels: transferred {acc_t:.3f}, random init {acc_r:.3f}")
    # pooled features after the second conv block: learnt filters vs random ones
    assert acc_t >= 0.75 and acc_t > acc_r + 0.1
    # and fine-tuning the transferred backbone on the new task works as a backbone too
    tuned = FineTuneClassifier(
        source.backbone_, unfreeze=3, max_epochs=10, lr=1e-2, batch_size=16,
        validation_split=None, random_state=0, verbose=0,
    ).fit(Xtr, ytr)  # fmt: skip
    acc_tuned = tuned.score(Xte, yte)
    print(f"fine-tuned last conv block (conv, BN, ReLU) on 50 labels: {acc_tuned:.3f}")
    assert acc_tuned >= 0.8 and acc_tuned > acc_r  # chance is 0.2
    assert set(tuned.classes_) == set(range(5, 10))
