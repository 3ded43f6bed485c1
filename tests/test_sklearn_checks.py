"""scikit-learn's estimator checks, run on the real default backbone.

The checks feed small numeric arrays ``(n, d)``; each row is one image (a
flattened square, or a 1 x d strip) that goes through the full preprocessing
and EfficientNet-Lite0 at 224 x 224, so the checks exercise the real data path.
None is expected to fail: results do not depend on batch composition
(``check_methods_subset_invariance``), dtypes, memory layout or pickling.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sktransfer import PretrainedFeatureExtractor


@parametrize_with_checks([PretrainedFeatureExtractor()])
def test_sklearn_compatible(estimator, check):
    check(estimator)
