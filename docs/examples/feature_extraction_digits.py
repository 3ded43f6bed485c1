"""Pretrained features + LogisticRegression on scikit-learn's 8x8 digits, against raw pixels.

Runs offline in a few seconds on a CPU: EfficientNet-Lite0 with its ImageNet weights (the
default backbone), fed 64 x 64 upsampled digits, then a logistic regression. Prints the
feature shape and the test accuracy of both models.

    python docs/examples/feature_extraction_digits.py
"""

from __future__ import annotations

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor
from sktransfer.backbones import BackboneSpec, DataConfig


def main() -> None:
    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.images[:400], digits.target[:400], test_size=0.5, stratify=digits.target[:400],
        random_state=0,
    )  # fmt: skip
    # The bundled ImageNet weights at a 64-pixel input: enough for 8x8 digits, and fast.
    lite0_64 = BackboneSpec(
        arch="efficientnet_lite0",
        name="lite0@64",
        data_config=DataConfig(input_size=64, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3),
    )
    extractor = PretrainedFeatureExtractor(lite0_64, batch_size=50, precision="fp32")
    features = make_pipeline(extractor, StandardScaler(), LogisticRegression(max_iter=2000))
    features.fit(X_train, y_train)
    pixels = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pixels.fit(X_train.reshape(len(X_train), -1), y_train)

    print(f"train {len(X_train)} / test {len(X_test)} digits, 10 classes")
    print(f"features per image: {extractor.n_features_out_}")
    print(
        f"pretrained features + LogisticRegression: test accuracy {features.score(X_test, y_test):.3f}"
    )
    raw = pixels.score(X_test.reshape(len(X_test), -1), y_test)
    print(f"raw 8x8 pixels + LogisticRegression:      test accuracy {raw:.3f}")


if __name__ == "__main__":
    main()
