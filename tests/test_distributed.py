"""Scale-out: Dask extraction (one backbone per worker), Dask grid search, resumable shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier, PretrainedFeatureExtractor
from sktransfer.exceptions import InputError
from sktransfer.shards import extract_to_shards, load_shards, shard_status

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

SMALL = BackboneSpec(
    arch="efficientnet_lite0",
    data_config=DataConfig(input_size=64, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3),
)
ROOT = Path(__file__).resolve().parents[1]


def _write(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"im{i:04d}.jpg"
        Image.fromarray((rng.random((32, 40, 3)) * 255).astype(np.uint8)).save(p)
        out.append(str(p))
    return out


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("dist"), 24)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        worker_class=distributed.Nanny, env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_dask_dataframe_extraction_matches_local_and_loads_once_per_worker(client, paths):
    import pandas as pd

    from sktransfer.distributed import extract

    ext = PretrainedFeatureExtractor(SMALL, batch_size=4)
    ddf = dd.from_pandas(pd.DataFrame({"path": paths}), npartitions=6)
    out = extract(ddf, ext)
    assert list(out.columns[:2]) == ["pretrainedfeatureextractor0", "pretrainedfeatureextractor1"]
    got = out.compute()
    local = ext.fit(paths).transform(paths)
    assert got.shape == local.shape and (got.dtypes == np.float32).all()
    np.testing.assert_allclose(got.to_numpy(), local, rtol=1e-4, atol=1e-4)
    assert got.index.tolist() == list(range(len(paths)))
    loads = client.run(lambda dask_worker: getattr(dask_worker, "_sktransfer", {}).get("loads", 0))
    assert sum(loads.values()) <= 2 and max(loads.values()) == 1  # 6 tasks, <= 1 load per worker


def test_dask_bag_and_series(client, paths):
    import dask.bag as db
    import pandas as pd

    from sktransfer.distributed import extract

    ext = PretrainedFeatureExtractor(SMALL, batch_size=4)
    arr = extract(db.from_sequence(paths, npartitions=3), ext).compute()
    ser = extract(dd.from_pandas(pd.Series(paths), npartitions=2), ext).compute()
    assert arr.shape == (len(paths), 1280)
    np.testing.assert_allclose(arr, ser.to_numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="dask DataFrame, Series or bag"):
        extract(paths, ext)


def test_grid_search_on_dask_backend_with_shared_cache(client, paths, tmp_path):
    import joblib
    from sklearn.model_selection import GridSearchCV

    y = np.arange(len(paths)) % 2
    clf = FineTuneClassifier(
        SMALL, max_epochs=1, validation_split=None, verbose=0, random_state=0, memory=str(tmp_path)
    )
    with joblib.parallel_backend("dask"):
        search = GridSearchCV(clf, {"unfreeze": [0, 1]}, cv=2).fit(paths, y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert any((tmp_path / "sktransfer-activations").rglob("*.npy"))


def test_shards_resume_after_kill(tmp_path, paths):
    out = tmp_path / "feats"
    code = textwrap.dedent(
        f"""
        import os, sys
        import numpy as np
        from sktransfer import PretrainedFeatureExtractor, BackboneSpec, DataConfig
        from sktransfer import shards
        spec = BackboneSpec(arch="efficientnet_lite0",
            data_config=DataConfig(input_size=64, resize_size=None, mean=(0.5,)*3, std=(0.5,)*3))
        real_save = shards._atomic_save_npy
        def save_then_die(path, arr):
            if path.name == "shard-000002.npy":
                with open(path.with_name(f".{{path.name}}.{{os.getpid()}}.tmp"), "wb") as f:  # half-written...
                    f.write(b"junk")
                os.kill(os.getpid(), 9)                          # ...and a hard kill
            real_save(path, arr)
        shards._atomic_save_npy = save_then_die
        shards.extract_to_shards({paths!r}, {str(out)!r}, PretrainedFeatureExtractor(spec), shard_size=5)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT
    )
    assert proc.returncode == -signal.SIGKILL
    assert shard_status(out) == {"done": 2, "total": 5, "complete": False}
    with pytest.raises(InputError, match="incomplete: 2 of 5"):
        load_shards(out)
    ext = PretrainedFeatureExtractor(SMALL)
    extract_to_shards(paths, out, ext, shard_size=5)
    feats, items = load_shards(out, return_items=True)
    assert items == paths
    np.testing.assert_allclose(feats, ext.fit(paths).transform(paths), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="other items"):
        extract_to_shards(paths[:-1], out, ext, shard_size=5)


def test_shards_in_memory_items_are_told_apart_by_content(tmp_path):
    rng = np.random.default_rng(0)
    first = [rng.random((20, 20, 3)) for _ in range(4)]
    second = [rng.random((20, 20, 3)) for _ in range(4)]  # same count, types and shapes
    ext = PretrainedFeatureExtractor(SMALL)
    extract_to_shards(first, tmp_path, ext, shard_size=2)
    with pytest.raises(InputError, match="other items"):  # not the shards of `first`, silently
        extract_to_shards(second, tmp_path, ext, shard_size=2)
    # equal content, other objects: the same items, so the run resumes
    extract_to_shards([a.copy() for a in first], tmp_path, ext, shard_size=2)
    np.testing.assert_allclose(
        load_shards(tmp_path), ext.fit().transform(first), rtol=1e-4, atol=1e-4
    )


def test_shards_resume_with_other_batch_size_and_verbose(tmp_path, paths, monkeypatch):
    from sktransfer import shards

    extract_to_shards(
        paths, tmp_path, PretrainedFeatureExtractor(SMALL, batch_size=4), shard_size=5
    )
    before = load_shards(tmp_path)
    (tmp_path / "shard-000003.npy").unlink()
    saved = []
    real_save = shards._atomic_save_npy
    monkeypatch.setattr(
        shards, "_atomic_save_npy", lambda p, a: (saved.append(p.name), real_save(p, a))
    )
    ext = PretrainedFeatureExtractor(SMALL, batch_size=16, num_workers=0, verbose=1)
    extract_to_shards(paths, tmp_path, ext, shard_size=5)  # speed settings only: resumes
    assert saved == ["shard-000003.npy"]
    np.testing.assert_allclose(load_shards(tmp_path), before, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="other items or extractor settings"):
        extract_to_shards(
            paths, tmp_path, PretrainedFeatureExtractor(SMALL, pooling="max"), shard_size=5
        )
