"""Inputs from the data libraries around scikit-learn: polars, PyArrow and Hugging Face
``datasets`` columns give the same features as the list of paths or texts they hold, and
image columns are decoded one item at a time, never all at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sktransfer import PretrainedFeatureExtractor
from sktransfer._containers import LazyItems
from sktransfer.exceptions import InputError
from sktransfer.io import as_image_source

pl = pytest.importorskip("polars")
pa = pytest.importorskip("pyarrow")
datasets = pytest.importorskip("datasets")

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def photos(hymenoptera):
    paths = sorted(str(p) for p in (hymenoptera / "val" / "bees").glob("*.jpg"))[:4]
    return paths


@pytest.fixture(scope="module")
def reference(fitted_extractor, photos):
    return fitted_extractor.transform(photos)


def test_polars_columns(fitted_extractor, photos, reference):
    np.testing.assert_allclose(fitted_extractor.transform(pl.Series("image", photos)), reference, **TOL)
    frame = pl.DataFrame({"image": photos})
    np.testing.assert_allclose(fitted_extractor.transform(frame), reference, **TOL)
    with pytest.raises(InputError, match="polars DataFrame with 2 columns"):
        fitted_extractor.transform(frame.with_columns(other=pl.lit(1)))
    # encoded image bytes in a Binary column: decoded on access
    blobs = pl.Series("image", [Path(p).read_bytes() for p in photos], dtype=pl.Binary)
    np.testing.assert_allclose(fitted_extractor.transform(blobs), reference, **TOL)


def test_set_output_polars(photos, reference):
    ext = PretrainedFeatureExtractor(precision="fp32").set_output(transform="polars")
    out = ext.fit(photos).transform(photos)
    assert isinstance(out, pl.DataFrame)
    assert out.columns == ext.get_feature_names_out().tolist()
    np.testing.assert_allclose(out.to_numpy(), reference, **TOL)


def test_arrow_arrays_and_tables(fitted_extractor, photos, reference):
    np.testing.assert_allclose(fitted_extractor.transform(pa.array(photos)), reference, **TOL)
    blobs = pa.chunked_array([[Path(p).read_bytes() for p in photos[:2]],
                              [Path(p).read_bytes() for p in photos[2:]]])  # fmt: skip
    source = as_image_source(blobs)
    assert isinstance(source.items, LazyItems) and len(source) == 4
    np.testing.assert_allclose(fitted_extractor.transform(blobs), reference, **TOL)
    np.testing.assert_allclose(
        fitted_extractor.transform(pa.table({"image": photos})), reference, **TOL
    )
    bad = pa.array([b"not an image"], type=pa.binary())
    with pytest.raises(InputError, match="Item 0 .* not an image"):
        fitted_extractor.transform(bad)


def test_hugging_face_datasets_image_column_is_decoded_lazily(fitted_extractor, photos, reference):
    ds = datasets.Dataset.from_dict({"image": photos}).cast_column("image", datasets.Image())
    source = as_image_source(ds)
    assert isinstance(source.items, LazyItems)  # nothing decoded yet
    part = source.subset([3, 1])
    assert isinstance(part.items, LazyItems) and part.original_index(0) == 3
    np.testing.assert_allclose(fitted_extractor.transform(ds), reference, **TOL)
    np.testing.assert_allclose(fitted_extractor.transform(ds["image"]), reference, **TOL)
    with pytest.raises(InputError, match="datasets.Dataset with 2 columns"):
        fitted_extractor.transform(ds.add_column("label", [0, 1, 0, 1]))


def test_text_columns_from_every_library():
    texts = ["a wonderful film", "a dull mess", "great acting"]
    ext = PretrainedFeatureExtractor("all-MiniLM-L6-v2", precision="fp32").fit(texts)
    ref = ext.transform(texts)
    for column in (
        pl.Series("text", texts),
        pl.DataFrame({"text": texts}),
        pa.array(texts),
        datasets.Dataset.from_dict({"text": texts}),
    ):
        np.testing.assert_allclose(ext.transform(column), ref, **TOL)
