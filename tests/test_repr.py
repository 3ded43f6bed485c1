"""Both estimators show their non-default parameters and fitted status, as text and as the
HTML diagram notebooks display (scikit-learn's ``_repr_html_``)."""

from __future__ import annotations

import html

import numpy as np
import pytest
from torch import nn

from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier, PretrainedFeatureExtractor


def _tiny_spec():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    return BackboneSpec(module=module, data_config=DataConfig(input_size=8, resize_size=None))


CASES = [
    pytest.param(
        lambda: PretrainedFeatureExtractor(_tiny_spec(), layer=0, batch_size=4),
        lambda est, X, y: est.fit(X),
        "PretrainedFeatureExtractor",
        ("layer", "batch_size=4"),
        id="extractor",
    ),
    pytest.param(
        lambda: FineTuneClassifier(
            _tiny_spec(),
            max_epochs=1,
            validation_split=None,
            verbose=0,
            random_state=0,
            optimizer__momentum=0.5,
            optimizer="sgd",
        ),  # fmt: skip
        lambda est, X, y: est.fit(X, y),
        "FineTuneClassifier",
        ("max_epochs=1", "optimizer__momentum=0.5"),
        id="finetune",
    ),
]


@pytest.mark.parametrize("make, fit, name, shown", CASES)
def test_text_and_html_repr(make, fit, name, shown):
    est = make()
    text = repr(est)
    assert text.startswith(f"{name}(")
    for param in shown:
        assert param in text, (param, text)
    assert "device=" not in text  # defaults are left out

    page = html.unescape(est._repr_html_())
    assert name in page
    assert ">max_epochs<" in page or ">layer<" in page  # the parameter table
    assert text.splitlines()[0] in page  # the text fallback for plain viewers
    assert "Not fitted" in page

    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 256, size=(8, 8, 8, 3), dtype=np.uint8), np.repeat(["a", "b"], 4)
    fit(est, X, y)
    fitted = html.unescape(est._repr_html_())
    assert name in fitted and "Not fitted" not in fitted and "Fitted" in fitted
