"""Scale-out on Dask: feature extraction over dask collections, one backbone per worker.

:func:`extract` maps a :class:`~sktransfer.PretrainedFeatureExtractor` over
the partitions of a dask DataFrame, Series or bag of image paths (or texts).
Only the extractor's parameters travel to the workers; each worker loads the
backbone once, on its own GPU when it has one (``device="auto"``), and keeps
it for every later task with the same parameters.

Grid searches distribute with joblib's Dask backend, unchanged::

    from dask.distributed import Client
    import joblib
    client = Client("scheduler-address:8786")   # or LocalCluster(), dask-jobqueue, dask-kubernetes
    with joblib.parallel_backend("dask"):
        GridSearchCV(FineTuneClassifier(memory="/shared/cache"), grid, cv=3).fit(X, y)

With ``memory=`` on storage all workers see, frozen activations computed by
one worker are reused by the others.

Torch threads on the workers: Dask's nanny starts each worker with
``OMP_NUM_THREADS=1``, so torch uses one thread per worker process. With one
worker per machine (a GPU worker, say), pass
``env={"OMP_NUM_THREADS": str(cores)}`` to the cluster; keep
``threads_per_worker=1``, since one partition already keeps torch busy. The
nanny also sets ``MALLOC_TRIM_THRESHOLD_=65536``, which makes glibc map and
unmap every large tensor of a forward pass; unset it with
``dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})``
before creating the cluster (or the same key set to ``null`` in the workers'
Dask config). See ``docs/scale.md`` and ``benchmarks/scale.py``.
"""

from __future__ import annotations

import threading

import numpy as np
from sklearn.base import clone

from .exceptions import import_optional

__all__ = ["extract"]

_LOCAL: dict = {}
_LOCK = threading.Lock()


def _dask():
    return import_optional(
        "dask", "Distributed extraction needs Dask: pip install 'sktransfer[dask]'"
    )


def _worker_store() -> dict:
    """Per-worker storage (the Dask worker object), or this process when not on a worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return _LOCAL
    if not hasattr(worker, "_sktransfer"):
        worker._sktransfer = {"extractors": {}, "loads": 0}
    return worker._sktransfer


def _fitted_extractor(params: dict, key: str):
    """The worker's fitted extractor for ``params``: loaded once, reused by later tasks."""
    from .extraction import PretrainedFeatureExtractor

    store = _worker_store()
    with _LOCK:
        extractors = store.setdefault("extractors", {})
        if key not in extractors:
            extractors[key] = PretrainedFeatureExtractor(**params).fit()
            store["loads"] = store.get("loads", 0) + 1
        return extractors[key]


def _transform_partition(part, params, key, columns):
    import pandas as pd

    ext = _fitted_extractor(params, key)
    values = part.iloc[:, 0] if isinstance(part, pd.DataFrame) else part
    if len(values) == 0:
        return pd.DataFrame(
            np.empty((0, len(columns)), np.float32), columns=columns, index=part.index
        )
    feats = ext.transform(list(values))
    return pd.DataFrame(feats, columns=columns, index=part.index)


def _transform_list(items, params, key):
    items = list(items)
    ext = _fitted_extractor(params, key)
    if not items:
        return np.empty((0, ext.n_features_out_), dtype=np.float32)
    return ext.transform(items)


def extract(collection, extractor=None):
    """Features of every item of a dask collection, computed on the workers.

    Parameters
    ----------
    collection : dask DataFrame (one column), dask Series or dask bag
        Image paths (or texts, for a text backbone).
    extractor : PretrainedFeatureExtractor, optional
        Its parameters are used on the workers (it is cloned; weights are
        loaded there, once per worker). Default: the default extractor.

    Returns
    -------
    dask DataFrame (for a DataFrame/Series: same index and partitions,
    float32 columns named like ``get_feature_names_out``) or dask Array
    of shape (n, n_features) (for a bag).

    Examples
    --------
    >>> import dask.bag as db
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> bag = db.from_sequence(list(load_digits().images[:4]), npartitions=2)
    >>> extract(bag, PretrainedFeatureExtractor(batch_size=2)).compute().shape
    (4, 1280)
    """
    _dask()
    import joblib

    from .extraction import PretrainedFeatureExtractor

    extractor = clone(extractor if extractor is not None else PretrainedFeatureExtractor())
    params = extractor.get_params(deep=False)
    key = joblib.hash(params)
    # the output width, from a local copy: a registry backbone loads in well under a second
    local = _fitted_extractor(params, key)
    columns = list(local.get_feature_names_out())
    import dask.bag as db
    import dask.dataframe as dd

    if isinstance(collection, (dd.DataFrame, dd.Series)):
        import pandas as pd

        if isinstance(collection, dd.DataFrame) and len(collection.columns) != 1:
            raise ValueError(
                f"Expected a dask DataFrame with one column of paths or texts; got columns "
                f"{list(collection.columns)}. Select the column first."
            )
        meta = pd.DataFrame({c: pd.Series(dtype=np.float32) for c in columns})
        return collection.map_partitions(_transform_partition, params, key, columns, meta=meta)
    if isinstance(collection, db.Bag):
        import dask
        import dask.array as da

        parts = collection.to_delayed()
        arrays = [
            da.from_delayed(
                dask.delayed(_transform_list)(p, params, key),
                shape=(np.nan, len(columns)),
                dtype=np.float32,
            )
            for p in parts
        ]
        return da.concatenate(arrays, axis=0)
    raise TypeError(
        f"extract needs a dask DataFrame, Series or bag; got {type(collection).__name__}. For "
        "in-memory data use PretrainedFeatureExtractor.transform."
    )
