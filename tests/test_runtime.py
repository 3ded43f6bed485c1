"""Device/batching runtime: out-of-memory retry, device fallback, precision resolution."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import PretrainedFeatureExtractor, _runtime
from sktransfer.exceptions import DeviceError, DeviceWarning


class _SmallMemoryDevice(nn.Module):
    """Behaves like a real layer but raises the out-of-memory error that CUDA raises when a
    batch is larger than ``limit`` (no GPU here, so the error is produced on purpose)."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.lin(x)


def test_out_of_memory_halves_the_batch_and_reports_it():
    x = torch.randn(37, 4)
    module = _SmallMemoryDevice(limit=5)
    with pytest.warns(DeviceWarning, match="retrying with batch size"):
        out = _runtime.run_inference(
            module, _runtime.TensorItems(x), batch_size=16, device=torch.device("cpu"),
            dtype=None, num_workers=0,
        )  # fmt: skip
    with torch.no_grad():
        # every row once, in order; smaller batches may round the last bit differently
        np.testing.assert_allclose(out, module.lin(x).numpy(), rtol=1e-5, atol=1e-7)


def test_out_of_memory_at_batch_one_is_raised():
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(DeviceWarning):
        _runtime.run_inference(
            _SmallMemoryDevice(limit=0), _runtime.TensorItems(torch.randn(4, 4)), batch_size=2,
            device=torch.device("cpu"), dtype=None, num_workers=0,
        )  # fmt: skip


def test_device_and_precision_resolution():
    cpu = torch.device("cpu")
    assert _runtime.resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert _runtime.resolve_device("auto") == cpu
        with pytest.warns(DeviceWarning, match="CUDA is not available"):
            assert _runtime.resolve_device("cuda") == cpu
    assert _runtime.resolve_precision("fp32", cpu) is None
    assert _runtime.precision_name(torch.float16) == "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        _runtime.resolve_precision("int8", cpu)


def _cpu(native_bf16):
    return {"model": "Test CPU", "flags": ["avx2"], "native_bf16": native_bf16}


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_cpu(monkeypatch, native):
    """precision="auto" extracts in bf16 exactly where the CPU has native bf16; training
    stays fp32; an explicit "bf16" without native support warns, once per process."""
    monkeypatch.setattr(_runtime, "cpu_info", lambda: _cpu(native))
    monkeypatch.setattr(_runtime, "_WARNED", set())
    cpu = torch.device("cpu")
    assert _runtime.resolve_precision("auto", cpu) is (torch.bfloat16 if native else None)
    assert _runtime.resolve_precision("auto", cpu, training=True) is None
    ext = PretrainedFeatureExtractor(nn.Sequential(nn.Conv2d(3, 4, 3)), device="cpu").fit()
    assert ext.precision_ == ("bf16" if native else "fp32")
    if not native:
        with pytest.warns(DeviceWarning, match="emulated.*slower"):
            assert _runtime.resolve_precision("bf16", cpu) is torch.bfloat16
    with warnings.catch_warnings():  # native: no warning; emulated: only the first time
        warnings.simplefilter("error")
        assert _runtime.resolve_precision("bf16", cpu) is torch.bfloat16


def test_cpu_info_reads_the_flags_that_decide_precision(monkeypatch):
    info = _runtime.cpu_info()
    assert info["model"] and set(info["flags"]) <= set(_runtime._CPU_FLAGS_REPORTED)
    if "ONEDNN_MAX_CPU_ISA" not in os.environ:
        assert info["native_bf16"] == bool(set(info["flags"]) & {"avx512_bf16", "amx_bf16"})
    # oneDNN limited below the bf16 instructions: bf16 is no longer native
    _runtime.cpu_info.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    try:
        assert _runtime.cpu_info()["native_bf16"] is False
    finally:
        _runtime.cpu_info.cache_clear()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", ""])
def test_bad_device_strings_get_our_error(device):
    with pytest.raises(DeviceError, match="Valid: 'auto', 'cpu', 'cuda'"):
        PretrainedFeatureExtractor(device=device).fit()


# --------------------------------------------------------------------------- the one iterator


def test_one_iterator_for_both_item_shapes_with_the_datasets_collate():
    """Training pairs (x, y) and inference items (x, index, error) of the same texts go
    through BatchLoader with the dataset's collate: the same tokenization per batch; only
    inference groups texts by length (indices put rows back)."""
    pytest.importorskip("transformers")
    from _hf_tiny import _tokenizer

    from sktransfer._modality import TextTransform
    from sktransfer._transfer_net import _LabeledDataset
    from sktransfer.io import TextDataset, as_text_source

    texts = ["a photo of a cat", "a dog", "the quick brown fox jumps over the lazy dog",
             "i loved every minute", "great", "a dull boring mess", "a photo"]  # fmt: skip
    transform = TextTransform(_tokenizer("bert"), max_length=16)
    y = np.arange(len(texts)) % 2
    train = _LabeledDataset(TextDataset(as_text_source(texts), transform), y)
    batches = list(_runtime.BatchLoader(train, batch_size=3, device="cpu"))
    assert [len(b) for b in batches] == [2, 2, 2]  # (x, y)
    for k, (x, yb) in enumerate(batches):
        expected = transform(texts[3 * k : 3 * k + 3])
        assert x.keys() == expected.keys()
        assert all(torch.equal(x[key], expected[key]) for key in x)
        assert yb.tolist() == y[3 * k : 3 * k + 3].tolist()

    items = TextDataset(as_text_source(texts), transform, errors="return")
    seen = []
    for x, idx, errors in _runtime.inference_batches(items, batch_size=3, device="cpu"):
        assert errors == [""] * len(idx)
        expected = transform([texts[i] for i in idx.tolist()])
        assert all(torch.equal(x[key], expected[key]) for key in x)
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(texts)))
    assert seen == [int(i) for b in items.batches(3) for i in b] != list(range(len(texts)))


def test_training_prediction_and_grad_cam_share_the_batches():
    """The skorch net iterates with BatchLoader, and its batches of preprocessed images
    are those of run_inference's iterator and those Grad-CAM returns, in the same order;
    inference and Grad-CAM never draw from the global torch RNG, while training shuffles
    reproducibly from it."""
    pytest.importorskip("captum")
    from torch.utils.data import DataLoader

    from sktransfer import FineTuneClassifier
    from sktransfer._transfer_net import _LabeledDataset
    from sktransfer.backbones import BackboneSpec, DataConfig
    from sktransfer.explain import _compute
    from sktransfer.io import as_image_source, make_dataset

    cfg = DataConfig(input_size=16, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, size=(11, 20, 24, 3), dtype=np.uint8)  # resized and cropped
    y = np.array(["a", "b"])[rng.integers(0, 2, 11)]
    clf = FineTuneClassifier(
        BackboneSpec(module=module, data_config=cfg), unfreeze="all", max_epochs=1,
        validation_split=None, random_state=0, verbose=0, device="cpu",
    ).fit(X, y)  # fmt: skip
    net = clf.net_
    assert net.iterator_train is net.iterator_valid is _runtime.BatchLoader

    dataset = make_dataset(as_image_source(X), clf.transform_)
    labeled = _LabeledDataset(dataset, np.arange(len(X)))
    net.set_params(batch_size=4)
    valid = [x for x, _ in net.get_iterator(labeled, training=False)]
    state = torch.get_rng_state()
    dataset.errors = "return"  # as run_inference reads it
    inference = [x for x, _, _ in _runtime.inference_batches(dataset, batch_size=4, device="cpu")]
    _, images, *_ = _compute(clf, X, None, None, 4)
    assert torch.equal(torch.get_rng_state(), state)
    assert [len(x) for x in valid] == [len(x) for x in inference] == [4, 4, 3]
    for a, b in zip(valid, inference):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(images, torch.cat(inference).numpy())
    # the same pixels as the transform of each image on its own
    first = clf.transform_(torch.from_numpy(X[0]).permute(2, 0, 1))
    assert torch.equal(inference[0][0], first)

    def shuffled(seed):
        torch.manual_seed(seed)
        loader = net.get_iterator(labeled, training=True)
        assert isinstance(loader, _runtime.BatchLoader) and isinstance(loader, DataLoader)
        return [yb.tolist() for _, yb in loader]

    order = shuffled(1)
    assert order == shuffled(1) and sorted(sum(order, [])) == list(range(len(X)))
    assert order != shuffled(2)  # drawn from the global RNG, as skorch's training expects


def test_text_nets_pickled_with_the_old_collate_still_load():
    from sktransfer._modality import TextCollate

    old = TextCollate.__new__(TextCollate)
    old.__setstate__({"transform": "|".join})  # the state of the former TextCollate
    x, yb = old([("ab", 1), ("c", 0)])
    assert x == "ab|c" and yb.tolist() == [1, 0]


_DATASETS = {"make_dataset", "ImageDataset", "TextDataset", "TensorItems"}


def _hand_loops(path) -> list[int]:
    """Lines in ``path`` that build a DataLoader, or read a dataset's items one by one
    (``ds.load(i)``, ``ds[i]``) where ``ds`` was made by a dataset constructor."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = [
        node.lineno
        for node in ast.walk(tree)
        if getattr(node, "id", None) == "DataLoader" or getattr(node, "attr", None) == "DataLoader"
    ]
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        datasets = set()
        for node in ast.walk(func):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                called = node.value.func
                name = getattr(called, "id", getattr(called, "attr", None))
                if name in _DATASETS:
                    datasets |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(func):
            receiver = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "load":
                    receiver = node.func.value
            elif isinstance(node, ast.Subscript):
                receiver = node.value
            if isinstance(receiver, ast.Name) and receiver.id in datasets:
                lines.append(node.lineno)
    return sorted(set(lines))


def test_every_loop_over_a_dataset_goes_through_the_one_iterator():
    """Inference, training, Grad-CAM and serving get their batches from _runtime's
    BatchLoader: no other module builds a DataLoader or stacks dataset items by hand."""
    from pathlib import Path

    package = Path(_runtime.__file__).parent
    found = {
        str(p.relative_to(package)): _hand_loops(p)
        for p in package.rglob("*.py")
        if p.name != "_runtime.py"
    }
    assert {k: v for k, v in found.items() if v} == {}
    assert _hand_loops(package / "_runtime.py")  # the check does see a DataLoader
