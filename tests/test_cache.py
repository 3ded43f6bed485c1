"""Activation cache (memory=): exactness, key invalidation, concurrency, cross-process reuse."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from PIL import Image

from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier, PretrainedFeatureExtractor
from sktransfer import cache as cache_mod
from sktransfer.cache import FeatureMemory

SMALL = BackboneSpec(
    arch="efficientnet_lite0",
    data_config=DataConfig(input_size=64, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3),
)
ROOT = Path(__file__).resolve().parents[1]


def _write_images(folder: Path, n: int = 12, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
        arr[:, : 8 + 3 * i] = 255 if i % 2 else 0
        p = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def images(tmp_path):
    paths = _write_images(tmp_path / "imgs")
    y = np.array([i % 2 for i in range(len(paths))])
    return paths, y


def test_extractor_disk_cache_is_exact_and_reused(images, tmp_path):
    paths, _ = images
    plain = PretrainedFeatureExtractor(SMALL).fit(paths).transform(paths)
    ext = PretrainedFeatureExtractor(SMALL, memory=str(tmp_path / "c")).fit(paths)
    cache_mod.stats(reset=True)
    first = ext.transform(paths)
    assert cache_mod.stats() == {"hits": 0, "misses": len(paths)}
    second = ext.transform(paths[::-1])
    assert cache_mod.stats(reset=True) == {"hits": len(paths), "misses": len(paths)}
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, first[::-1])


def test_key_changes_with_file_content_layer_and_weights(images, tmp_path):
    paths, _ = images
    mem = str(tmp_path / "c")
    ext = PretrainedFeatureExtractor(SMALL, memory=mem).fit(paths)
    before = ext.transform(paths)
    # rewrite one file in place (same name): its entry must not be served
    arr = np.zeros((40, 56, 3), dtype=np.uint8)
    Image.fromarray(arr).save(paths[3])
    cache_mod.stats(reset=True)
    after = ext.transform(paths)
    assert cache_mod.stats()["misses"] == 1
    assert not np.allclose(after[3], before[3])
    np.testing.assert_array_equal(np.delete(after, 3, 0), np.delete(before, 3, 0))
    # another layer: all misses
    cache_mod.stats(reset=True)
    PretrainedFeatureExtractor(SMALL, layer="blocks.5", memory=mem).fit(paths).transform(paths)
    assert cache_mod.stats()["hits"] == 0
    # other weights (random init): all misses
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    spec = BackboneSpec(module=net, data_config=SMALL.data_config)
    cache_mod.stats(reset=True)
    a = PretrainedFeatureExtractor(spec, memory=mem).fit(paths).transform(paths)
    with torch.no_grad():
        net[0].weight.mul_(2)
    b = PretrainedFeatureExtractor(spec, memory=mem).fit(paths).transform(paths)
    assert cache_mod.stats()["hits"] == 0
    assert not np.allclose(a, b)


def test_finetune_with_memory_matches_without(images, tmp_path):
    paths, y = images
    kw = dict(
        backbone=SMALL, unfreeze=1, max_epochs=3, validation_split=None, verbose=0, random_state=0
    )
    ref = FineTuneClassifier(**kw).fit(paths, y)
    mem = joblib.Memory(str(tmp_path / "jl"), verbose=0)
    cached = FineTuneClassifier(memory=mem, **kw).fit(paths, y)
    np.testing.assert_allclose(cached.predict_proba(paths), ref.predict_proba(paths), rtol=1e-4, atol=1e-4)
    # a second fit (e.g. another grid candidate) is served from disk
    cache_mod.stats(reset=True)
    again = FineTuneClassifier(memory=mem, **{**kw, "lr": 1e-2}).fit(paths, y)
    again.predict(paths)
    s = cache_mod.stats(reset=True)
    assert s["misses"] == 0 and s["hits"] == 2 * len(paths)


def test_freeze_depth_search_runs_the_frozen_bottom_once(images, tmp_path, monkeypatch):
    """unfreeze=0 stores the cuts unfreeze=1 and 2 need; unfreeze=2 first lets a deeper
    cut be computed on from its stored activations. Same results as without memory."""
    import sktransfer._runtime as rt

    paths, y = images
    kw = dict(backbone=SMALL, max_epochs=2, validation_split=None, verbose=0, random_state=0)
    inputs = []
    real = rt.run_inference

    def spy(module, dataset, **kwargs):
        inputs.append(type(dataset).__name__)
        return real(module, dataset, **kwargs)

    monkeypatch.setattr(rt, "run_inference", spy)
    mem = str(tmp_path / "c")
    cache_mod.stats(reset=True)
    deepest_first = [
        FineTuneClassifier(unfreeze=u, memory=mem, **kw).fit(paths, y) for u in (0, 1, 2)
    ]
    assert cache_mod.stats(reset=True) == {"hits": 2 * len(paths), "misses": len(paths)}
    assert inputs.count("ImageDataset") == 1  # the images went through the backbone once
    inputs.clear()
    mem2 = str(tmp_path / "c2")
    shallow_first = [
        FineTuneClassifier(unfreeze=u, memory=mem2, **kw).fit(paths, y) for u in (2, 0)
    ]
    assert (
        inputs.count("ImageDataset") == 1 and inputs.count("TensorItems") == 1
    )  # cut 9 from cut 7
    monkeypatch.setattr(rt, "run_inference", real)
    for u, fitted in [(0, deepest_first[0]), (1, deepest_first[1]), (2, deepest_first[2]),
                      (2, shallow_first[0]), (0, shallow_first[1])]:  # fmt: skip
        plain = FineTuneClassifier(unfreeze=u, **kw).fit(paths, y)
        np.testing.assert_allclose(
            fitted.predict_proba(paths), plain.predict_proba(paths), rtol=1e-4, atol=1e-4
        )


def test_corrupt_or_partial_entries_are_recomputed(images, tmp_path):
    paths, _ = images
    mem = FeatureMemory(tmp_path / "c")
    ext = PretrainedFeatureExtractor(SMALL, memory=mem).fit(paths)
    ref = ext.transform(paths)
    entries = sorted(mem.root.rglob("*.npy"))
    assert len(entries) == len(paths)
    entries[0].write_bytes(entries[0].read_bytes()[:40])  # a truncated entry
    (entries[1].parent / ".x.123.abcd.tmp").write_bytes(b"half-written")  # a killed writer's temp
    cache_mod.stats(reset=True)
    again = ext.transform(paths)
    assert cache_mod.stats()["misses"] == 1
    # the recomputed row ran in a batch of 1: equal up to float32 batch-composition noise
    np.testing.assert_allclose(again, ref, rtol=1e-4, atol=1e-4)


def test_size_bound_evicts_least_recently_used(tmp_path):
    mem = FeatureMemory(tmp_path / "c", max_bytes=5000)
    for i in range(10):
        mem.put("m", [f"{i:02d}key"], [np.zeros(256, dtype=np.float32)])  # ~1.1 kB each
        os.utime(mem._path("m", f"{i:02d}key"), (i, i))
    mem.evict()
    assert mem.size() <= 5000
    kept = mem.get("m", [f"{i:02d}key" for i in range(10)])
    assert kept[-1] is not None and kept[0] is None


_WORKER = textwrap.dedent(
    """
    import sys, json, numpy as np
    from sktransfer import PretrainedFeatureExtractor, BackboneSpec, DataConfig
    from sktransfer import cache
    spec = BackboneSpec(arch="efficientnet_lite0",
                        data_config=DataConfig(input_size=64, resize_size=None, mean=(0.5,)*3, std=(0.5,)*3))
    paths = sys.argv[2:]
    F = PretrainedFeatureExtractor(spec, memory=sys.argv[1]).fit(paths).transform(paths)
    np.save(sys.argv[1] + f"/out_{sys.argv[2][-7:-4]}_{__import__('os').getpid()}.npy", F)
    print(json.dumps(cache.stats()))
    """
)


def _spawn(mem, paths):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, mem, *paths],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_two_processes_write_at_once_and_a_third_reuses(images, tmp_path):
    import json

    paths, _ = images
    mem = tmp_path / "shared"
    mem.mkdir()
    procs = [_spawn(str(mem), paths), _spawn(str(mem), paths)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    arrays = [np.load(f) for f in sorted(mem.glob("out_*.npy"))]
    assert len(arrays) == 2
    np.testing.assert_array_equal(arrays[0], arrays[1])
    third = _spawn(str(mem), paths)
    stats = json.loads(third.communicate(timeout=300)[0].strip().splitlines()[-1])
    assert third.returncode == 0
    assert stats == {"hits": len(paths), "misses": 0}
    ref = PretrainedFeatureExtractor(SMALL).fit(paths).transform(paths)
    # other thread count in the workers: equal up to float32 reduction-order noise
    np.testing.assert_allclose(arrays[0], ref, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- fixed cost per fit


def test_fit_on_cached_activations_runs_no_frozen_stage(images, tmp_path, monkeypatch):
    """A fit served from the cache sizes its head from the backbone's declared width:
    no probe forward pass through the frozen stages."""
    from sktransfer._backbone import Backbone

    paths, y = images
    kw = dict(backbone=SMALL, unfreeze=1, max_epochs=1, validation_split=None, verbose=0)
    mem = str(tmp_path / "c")
    FineTuneClassifier(memory=mem, random_state=0, **kw).fit(paths, y)  # fills the cache
    starts = []
    real = Backbone.forward

    def spy(self, x, start=0, stop=None):
        starts.append(start)
        return real(self, x, start, stop)

    monkeypatch.setattr(Backbone, "forward", spy)
    clf = FineTuneClassifier(memory=mem, random_state=1, **kw).fit(paths, y)
    assert starts and min(starts) == clf.input_stage_  # only the trainable top ran
    assert clf.net_.module_.head.in_features == 1280


def test_pooled_width_is_what_the_probe_measures():
    from sktransfer._backbone import Pooling
    from sktransfer.backbones import load_backbone

    bb = load_backbone(SMALL)
    x = torch.zeros(1, 3, 64, 64)
    for mode in ("auto", "avg", "mean", "max"):
        with torch.no_grad():
            assert bb.pooled_width(mode) == Pooling(mode)(bb.eval()(x)).shape[1]
    assert bb.pooled_width("flatten") is None  # depends on the input size: probed


def test_module_fingerprints_hash_a_shared_tensor_once(monkeypatch):
    from torch import nn

    body = nn.Linear(64, 64)
    nested = {1: body, 2: nn.Sequential(body, nn.ReLU()), 3: nn.Sequential(body, nn.Linear(64, 2))}
    keys = cache_mod.module_fingerprints(nested, precision="fp32")
    assert keys == {c: cache_mod.module_fingerprint(m, precision="fp32") for c, m in nested.items()}
    assert len(set(keys.values())) == 3
    hashed = []
    real = cache_mod.hashlib.blake2b

    def spy(*args, **kwargs):
        if args:  # the digest of one tensor's bytes
            hashed.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod.hashlib, "blake2b", spy)
    cache_mod.module_fingerprints(nested)
    assert len(hashed) == 2 + 2  # body's weight and bias once, the last Linear's two


def test_file_content_keys_are_read_once_until_the_file_changes(images, tmp_path, monkeypatch):
    from sktransfer.io import ImageSource, as_image_source

    paths, _ = images
    monkeypatch.setattr(cache_mod, "_RACY_SECONDS", -1.0)  # the files were written just now
    monkeypatch.setattr(cache_mod, "_FILE_KEYS", {})
    read = []
    real = ImageSource.fingerprint

    def spy(self, i):
        read.append(i)
        return real(self, i)

    monkeypatch.setattr(ImageSource, "fingerprint", spy)
    memory = FeatureMemory(tmp_path / "c")
    source = as_image_source(paths)
    first, _, _ = cache_mod._lookup(memory, "model", source)
    again, _, _ = cache_mod._lookup(memory, "model", source)
    assert first == again and len(read) == len(paths)  # the second lookup read no file
    Image.fromarray(np.zeros((40, 56, 3), dtype=np.uint8)).save(paths[3])  # rewritten in place
    changed, _, _ = cache_mod._lookup(memory, "model", source)
    assert len(read) == len(paths) + 1
    assert changed[3] != first[3] and changed[:3] + changed[4:] == first[:3] + first[4:]
