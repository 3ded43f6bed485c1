"""GridSearchCV over fine-tuning depth and learning rate, with frozen activations cached.

``FineTuneClassifier(memory=folder)`` stores the output of the frozen stages once per image
and cut point, so every fold, learning rate and the refit train only the unfrozen top.
Digits 0-4 from scikit-learn, 32-pixel inputs, 2 epochs: a few seconds on a CPU.

    python docs/examples/grid_search_freeze_depth.py
"""

from __future__ import annotations

import tempfile

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split

from sktransfer import FineTuneClassifier
from sktransfer.backbones import BackboneSpec, DataConfig
from sktransfer.cache import stats


def main() -> None:
    digits = load_digits()
    keep = digits.target < 5
    X_train, X_test, y_train, y_test = train_test_split(
        digits.images[keep][:200], digits.target[keep][:200], test_size=0.5,
        stratify=digits.target[keep][:200], random_state=0,
    )  # fmt: skip
    lite0_32 = BackboneSpec(
        arch="efficientnet_lite0",
        name="lite0@32",
        data_config=DataConfig(input_size=32, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3),
    )
    with tempfile.TemporaryDirectory() as cache:
        clf = FineTuneClassifier(
            lite0_32,
            memory=cache,
            max_epochs=2,
            lr_schedule="constant",  # the recipe of the quoted output (before the default changed)
            label_smoothing=0.0,
            validation_split=None,
            early_stopping=False,
            precision="fp32",
            verbose=0,
            random_state=0,
        )
        search = GridSearchCV(clf, {"unfreeze": [0, 1, 2], "lr": [1e-3, 1e-2]}, cv=2)
        stats(reset=True)
        search.fit(X_train, y_train)
        cache_use = stats()
        results = search.cv_results_
        for params, score in zip(results["params"], results["mean_test_score"]):
            print(f"unfreeze={params['unfreeze']} lr={params['lr']:g}: CV accuracy {score:.3f}")
        print(f"best: {search.best_params_}, test accuracy {search.score(X_test, y_test):.3f}")
        print(f"cache: {cache_use['misses']} computed, {cache_use['hits']} reused")


if __name__ == "__main__":
    main()
