"""Columns from the data libraries around scikit-learn, as plain Python items.

polars Series and DataFrames, PyArrow arrays, chunked arrays and tables, and Hugging
Face ``datasets.Dataset`` columns become what :mod:`sktransfer.io` reads: a numpy array
(numeric data), a list (paths, texts), or a :class:`LazyItems` sequence whose images are
decoded one at a time on access (encoded image bytes, a ``datasets`` ``Image``
column), so an image column is never held in memory decoded. None of these libraries is
imported here unless the input is one of theirs.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .exceptions import InputError

__all__ = ["LazyItems", "from_data_library"]


class LazyItems(Sequence):
    """``n`` items produced on access by ``get(i)``; a subset stays lazy.

    Examples
    --------
    >>> items = LazyItems(lambda i: i * 10, 4, kind="pil")
    >>> len(items), items[3], list(items.take([2, 0]))
    (4, 30, [20, 0])
    """

    def __init__(self, get: Callable[[int], Any], n: int, kind: str, indices=None):
        self._get = get
        self._n = int(n)
        self.kind = kind
        self._indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return self._n if self._indices is None else len(self._indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._get(int(self._indices[i]) if self._indices is not None else i)

    def take(self, indices) -> LazyItems:
        indices = np.asarray(indices, dtype=np.int64)
        base = indices if self._indices is None else self._indices[indices]
        return LazyItems(self._get, self._n, self.kind, base)


def _decode_bytes(data: bytes, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{where}: the bytes are not an image Pillow can read ({exc}).") from exc
    return img


def _module(X) -> str:
    return type(X).__module__.split(".")[0]


def from_data_library(X: Any):
    """``X`` converted if it comes from polars, PyArrow or ``datasets``; else ``None``.

    Examples
    --------
    >>> from_data_library([1, 2]) is None
    True
    """
    lib = _module(X)
    if lib == "polars":
        return _from_polars(X)
    if lib == "pyarrow":
        return _from_arrow(X)
    if lib == "datasets":
        return _from_datasets(X)
    return None


def _one_column(columns: list[str], what: str) -> None:
    if len(columns) != 1:
        raise InputError(
            f"Got a {what} with {len(columns)} columns {columns[:10]}; expected one column of "
            "images or texts. Select it, or use a ColumnTransformer."
        )


def _from_polars(X):
    import polars as pl

    if isinstance(X, pl.LazyFrame):
        X = X.collect()
    if isinstance(X, pl.DataFrame):
        if all(dt.is_numeric() for dt in X.dtypes):
            return X.to_numpy()
        _one_column(X.columns, "polars DataFrame")
        X = X.to_series(0)
    if isinstance(X, pl.Series):
        if X.dtype.is_numeric():
            return X.to_numpy()
        if X.dtype == pl.Binary:
            return _encoded_images(X.to_arrow(), "polars Series")
        return X.to_list()
    raise InputError(f"Unsupported polars input {type(X).__name__}; pass a Series or DataFrame.")


def _from_arrow(X):
    import pyarrow as pa

    if isinstance(X, pa.Table):
        if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in X.schema.types):
            return np.column_stack([c.to_numpy() for c in X.columns])
        _one_column(X.column_names, "PyArrow Table")
        X = X.column(0)
    if isinstance(X, (pa.Array, pa.ChunkedArray)):
        t = X.type
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            return X.to_numpy()
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return _encoded_images(X, "PyArrow array")
        if pa.types.is_struct(t) and {"bytes", "path"} <= {f.name for f in t}:
            return _encoded_images(X, "PyArrow array")  # the datasets Image storage
        return X.to_pylist()
    raise InputError(f"Unsupported PyArrow input {type(X).__name__}; pass an Array or a Table.")


def _encoded_images(arrow, what: str) -> LazyItems:
    """Encoded images in an Arrow column (bytes, or {bytes, path} structs), decoded on access."""
    import pyarrow as pa

    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()

    def get(i: int):
        value = arrow[i].as_py()
        if isinstance(value, dict):
            if value.get("bytes") is None and value.get("path"):
                from PIL import Image

                with Image.open(value["path"]) as img:
                    img.load()
                    return img.copy()
            value = value.get("bytes")
        if value is None:
            raise InputError(f"Item {i} of the {what} is missing (null); expected an image.")
        return _decode_bytes(value, f"Item {i} of the {what}")

    return LazyItems(get, len(arrow), kind="pil")


def _from_datasets(X):
    import datasets

    if isinstance(X, datasets.Dataset):
        _one_column(X.column_names, "datasets.Dataset")
        column = X.column_names[0]
        feature = X.features[column]
        if isinstance(feature, datasets.Image):
            n = len(X)
            return LazyItems(lambda i: X[int(i)][column], n, kind="pil")
        return list(X[column])
    column_type = getattr(datasets.arrow_dataset, "Column", None)
    if column_type is not None and isinstance(X, column_type):  # ds["image"]: lazy already
        from PIL import Image

        if len(X) and isinstance(X[0], Image.Image):
            return LazyItems(lambda i: X[int(i)], len(X), kind="pil")
        return list(X)
    raise InputError(
        f"Unsupported datasets input {type(X).__name__}; pass a one-column Dataset, e.g. "
        "ds.select_columns(['image'])."
    )
