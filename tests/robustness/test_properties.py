"""Property-based tests (hypothesis) over input containers, shapes and dtypes.

For any supported container, layout and dtype, both estimators keep the row
count and order, output finite float32 features / valid labels, and agree
across containers holding the same images.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier, PretrainedFeatureExtractor
from sktransfer.exceptions import InputError

SMALL = BackboneSpec(
    arch="efficientnet_lite0",
    data_config=DataConfig(input_size=32, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3),
)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
DTYPES = ["uint8", "uint16", "float32", "float64", "int64", "bool"]


@pytest.fixture(scope="module")
def ext():
    # fp32: rows are compared across batch compositions (bf16 would differ by more)
    return PretrainedFeatureExtractor(SMALL, batch_size=5, precision="fp32").fit()


@pytest.fixture(scope="module")
def clf():
    rng = np.random.default_rng(0)
    X = (rng.random((8, 16, 16, 3)) * 255).astype(np.uint8)
    return FineTuneClassifier(SMALL, max_epochs=1, validation_split=None, verbose=0, random_state=0).fit(
        X, ["a", "b"] * 4
    )


@st.composite
def image_batches(draw):
    n = draw(st.integers(1, 6))
    h = draw(st.integers(1, 20))
    w = draw(st.integers(1, 20))
    c = draw(st.sampled_from([None, 1, 3, 4]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    if dtype == "bool":
        X = rng.random(shape) > 0.5
    elif dtype.startswith("uint") or dtype == "int64":
        hi = {"uint8": 256, "uint16": 65536, "int64": 1000}[dtype]
        X = rng.integers(0, hi, shape).astype(dtype)
    else:
        X = (rng.random(shape) * draw(st.sampled_from([1.0, 16.0, 255.0, -3.0]))).astype(dtype)
    return X


def _containers(X):
    """The same images in every container the estimators accept."""
    out = {"ndarray": X, "list_of_arrays": list(X)}
    if X.ndim == 4 and X.shape[2] not in (1, 2, 3, 4):
        # (n, C, H, W) is only unambiguous when W is not itself a channel count (documented rule)
        out["channels_first"] = np.moveaxis(X, -1, 1)
    if X.dtype == np.uint8 and (X.ndim == 3 or X.shape[-1] in (1, 3, 4)):
        imgs = [Image.fromarray(x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x) for x in X]
        out["pil"] = imgs
        out["series"] = pd.Series(imgs)
        out["frame"] = pd.DataFrame({"image": imgs})
    return out


@SETTINGS
@given(X=image_batches())
def test_extractor_any_container_shape_dtype(ext, count_case, X):
    results = {}
    for name, data in _containers(X).items():
        out = ext.transform(data)
        assert out.dtype == np.float32 and out.shape == (len(X), 1280)
        assert np.isfinite(out).all()
        results[name] = out
        count_case("extractor containers")
    # containers of the same kind decode identically
    for group in (("ndarray", "list_of_arrays", "channels_first"), ("pil", "series", "frame")):
        present = [results[g] for g in group if g in results]
        for out in present[1:]:
            np.testing.assert_allclose(out, present[0], rtol=1e-4, atol=1e-4)
    # arrays are resized by torchvision's tensor kernels, PIL images by Pillow's: for images of
    # a few pixels upsampled many times the two interpolations differ, otherwise they agree
    if "pil" in results and min(X.shape[1:3]) >= 8:
        a, b = results["pil"], results["ndarray"]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        assert cos.min() > 0.98


@SETTINGS
@given(X=image_batches(), perm_seed=st.integers(0, 1000))
def test_extractor_rows_follow_input_order(ext, count_case, X, perm_seed):
    perm = np.random.default_rng(perm_seed).permutation(len(X))
    np.testing.assert_allclose(ext.transform(X[perm]), ext.transform(X)[perm], rtol=1e-4, atol=1e-4)
    count_case("row order")


@SETTINGS
@given(X=image_batches())
def test_classifier_any_container_shape_dtype(clf, count_case, X):
    for data in _containers(X).values():
        pred = clf.predict(data)
        proba = clf.predict_proba(data)
        assert pred.shape == (len(X),) and set(pred) <= {"a", "b"}
        np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
        count_case("classifier containers")


@SETTINGS
@given(
    shape=st.sampled_from([(0, 4, 4), (3,), (2, 3, 4, 5, 6), (2, 6, 6, 7)]),
    dtype=st.sampled_from(["float32", "uint8"]),
)
def test_invalid_shapes_raise_input_errors(ext, count_case, shape, dtype):
    with pytest.raises((InputError, ValueError)):
        ext.transform(np.zeros(shape, dtype=dtype))
    count_case("invalid shapes")


@SETTINGS
@given(row=st.integers(0, 4), value=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_non_finite_values_name_the_row(ext, count_case, row, value):
    X = np.zeros((5, 6, 6), dtype=np.float32)
    X[row, 2, 3] = value
    with pytest.raises(InputError, match=rf"first: \[{row}\]"):
        ext.transform(X)
    count_case("non-finite values")
