"""Fine-tune EfficientNet-Lite0 on a small subset of the ants/bees photos, two ways.

Head only (``unfreeze=0``) and the top two stages (``unfreeze=2``), 3 epochs each, on 40
training photos (20 ants, 20 bees), scored on 40 validation photos. The photos are those of
the PyTorch transfer-learning tutorial, expected in ../shared/data/hymenoptera beside the
repository (or in $SKTRANSFER_DATA/hymenoptera). Inputs are 128 pixels instead of the
weights' 224 to keep the run short on a CPU.

    python docs/examples/finetune_hymenoptera_quick.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sktransfer import FineTuneClassifier, load_image_folder
from sktransfer.backbones import BackboneSpec, DataConfig

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("SKTRANSFER_DATA", REPO.parent / "shared" / "data")) / "hymenoptera"


def every_kth_per_class(target: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of ``per_class`` evenly spaced images of each class (a deterministic subset)."""
    picks = []
    for label in np.unique(target):
        idx = np.flatnonzero(target == label)
        picks.append(idx[np.linspace(0, len(idx) - 1, per_class).astype(int)])
    return np.concatenate(picks)


def main() -> None:
    train = load_image_folder(DATA / "train")
    val = load_image_folder(DATA / "val")
    tr = every_kth_per_class(train.target, 20)
    va = every_kth_per_class(val.target, 20)
    names = np.asarray(train.target_names)
    X, y = train.data[tr], names[train.target[tr]]
    X_val, y_val = val.data[va], names[val.target[va]]

    lite0_128 = BackboneSpec(
        arch="efficientnet_lite0",
        name="lite0@128",
        data_config=DataConfig(input_size=128, resize_size=146, mean=(0.5,) * 3, std=(0.5,) * 3),
    )
    print(f"{len(X)} training photos, {len(X_val)} validation photos, classes {names.tolist()}")
    for unfreeze in (0, 2):
        clf = FineTuneClassifier(
            lite0_128,
            unfreeze=unfreeze,
            lr=3e-3 if unfreeze == 0 else 1e-3,
            max_epochs=3,
            lr_schedule="constant",  # the recipe of the quoted output (before the default changed)
            label_smoothing=0.0,
            batch_size=16,
            validation_split=None,
            early_stopping=False,
            precision="fp32",
            verbose=0,
            random_state=0,
        ).fit(X, y)
        losses = ", ".join(f"{v:.3f}" for v in clf.history_[:, "train_loss"])
        print(f"unfreeze={unfreeze}: train loss per epoch {losses}; "
              f"val accuracy {clf.score(X_val, y_val):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
