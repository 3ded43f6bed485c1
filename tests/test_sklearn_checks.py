"""scikit-learn's estimator checks, on both estimators.

The checks feed small numeric arrays ``(n, d)``; each row is one image (a
flattened square, or a 1 x d strip) that goes through the full preprocessing.

The extractor runs on the real default backbone (EfficientNet-Lite0 at 224 x
224), so the checks exercise the real data path. None is expected to fail:
results do not depend on batch composition (``check_methods_subset_invariance``),
dtypes, memory layout or pickling.

``FineTuneClassifier`` runs on a small random conv net given as a
``BackboneSpec`` (8 x 8 inputs, one epoch), as a new user would try it; the
whole run takes seconds. The checks it fails are listed with the reason below
(strict: a listed check that starts passing fails the run, so the list stays true).

``FineTuneRegressor`` runs on the same net. Its tags say what it is: multi-output
targets (``target_tags.multi_output``) and a poor score on tabular toy data
(``regressor_tags.poor_score``: ``check_regressors_train`` then checks everything but
R^2 > 0.5; ``tests/test_targets.py`` tests learning on images); only the tensor-hash
check is listed.
"""

import sys
from pathlib import Path

import torch
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from sktransfer import (
    BackboneSpec,
    DataConfig,
    FineTuneClassifier,
    FineTuneRegressor,
    PretrainedFeatureExtractor,
)

sys.path.insert(0, str(Path(__file__).parent))
from _small_fits import small_fit  # noqa: E402

_ONE_EPOCH_ACCURACY = (
    "accuracy on tabular toy data after one epoch: each row of the blobs becomes a tiny image "
    "and a random conv net trained for one epoch does not reach the accuracy (0.83) or F1 (0.87) "
    "these checks require of tabular models; test_finetune.py tests learning on real images"
)
_TENSOR_HASH = (
    "joblib.hash of a torch tensor includes its storage address, so the deep copy of the "
    "backbone parameter that this check compares against never hashes equal, mutated or not. "
    "test_finetune.py::test_fit_leaves_the_user_backbone_unchanged checks the real contract "
    "(the user's module keeps its weights, buffers, mode and device)"
)


def _tiny_conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))


def _fine_tune(estimator=FineTuneClassifier):
    spec = BackboneSpec(
        module=_tiny_conv_net(), data_config=DataConfig(input_size=8, resize_size=None)
    )
    return small_fit(estimator, spec, max_epochs=1, lr=1e-3)


def _expected_failed_checks(estimator):
    if isinstance(estimator, FineTuneRegressor):
        return {"check_estimators_overwrite_params": _TENSOR_HASH}
    if isinstance(estimator, FineTuneClassifier):
        return {
            "check_classifiers_train": _ONE_EPOCH_ACCURACY,
            "check_class_weight_classifiers": _ONE_EPOCH_ACCURACY,
            "check_estimators_overwrite_params": _TENSOR_HASH,
        }
    return {}


@parametrize_with_checks(
    [PretrainedFeatureExtractor(), _fine_tune(), _fine_tune(FineTuneRegressor)],
    expected_failed_checks=_expected_failed_checks,
    xfail_strict=True,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
