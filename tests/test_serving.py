"""Export for serving (``sktransfer.export``): ONNX, TorchScript and torch.export programs
reproduce the estimators' outputs on real photos, the example service reproduces
``predict_proba`` with onnxruntime, numpy and Pillow alone, and a Pipeline becomes one
ONNX graph. fp32 throughout; outputs compared at the project's tolerance (1e-4)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from torch import nn

from sktransfer import (
    BackboneSpec,
    DataConfig,
    FineTuneClassifier,
    PretrainedFeatureExtractor,
    export,
)
from sktransfer.exceptions import ExportError, MissingDependencyError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "docs" / "examples" / "serve_onnx.py"
TOL = dict(rtol=1e-4, atol=1e-4)


def _photos(hymenoptera, split, n):
    paths = []
    for cls in ("ants", "bees"):
        paths += sorted(str(p) for p in (hymenoptera / split / cls).glob("*.jpg"))[:n]
    return paths, np.array([Path(p).parent.name for p in paths])


@pytest.fixture(scope="module")
def classifier(hymenoptera):
    X, y = _photos(hymenoptera, "train", 12)
    clf = FineTuneClassifier(
        unfreeze=1, max_epochs=1, batch_size=8, validation_split=None, random_state=0,
        verbose=0, precision="fp32",
    ).fit(X, y)  # fmt: skip
    return clf, _photos(hymenoptera, "val", 6)[0]


@pytest.fixture(scope="module")
def onnx_classifier(classifier, tmp_path_factory):
    clf, _ = classifier
    return export(clf, tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_served_alone_reproduces_predict_proba(classifier, onnx_classifier, capsys):
    clf, val = classifier
    serve = runpy.run_path(str(SERVE))
    probabilities, classes = serve["predict_proba"](onnx_classifier, val)
    np.testing.assert_allclose(probabilities, clf.predict_proba(val), **TOL)
    assert classes == clf.classes_.tolist()
    # the script's printed top predictions are the estimator's
    serve["main"]([str(onnx_classifier), *val])
    printed = [line.split(": ")[1].split(" ")[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == clf.predict(val).tolist()
    meta = json.loads(onnx_classifier.with_suffix(".json").read_text())
    assert meta["preprocessing"]["input_size"] == clf.backbone_.data_config.input_size
    assert meta["preprocessing"]["mean"] == list(clf.backbone_.data_config.mean)
    assert meta["max_abs_diff_vs_torch"] <= 1e-4
    assert meta["opset"] >= 17


def test_the_service_script_needs_neither_sktransfer_nor_torch():
    source = SERVE.read_text()
    assert "sktransfer" not in source.split('"""', 2)[2]  # the code, not the docstring
    assert "import torch" not in source


@pytest.mark.parametrize("fmt", ["torchscript", "torch.export"])
def test_torch_programs_reproduce_predict_proba(classifier, fmt, tmp_path):
    clf, val = classifier
    path = export(clf, tmp_path / "model.pt", format=fmt)
    serve = runpy.run_path(str(SERVE))
    meta = json.loads(path.with_suffix(".json").read_text())
    x = torch.from_numpy(np.stack([serve["preprocess"](p, meta["preprocessing"]) for p in val]))
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            out = torch.jit.load(str(path))(x)
        else:
            out = torch.export.load(str(path)).module()(x)
    np.testing.assert_allclose(out.numpy(), clf.predict_proba(val), **TOL)


def test_extractor_and_pipeline_export(classifier, tmp_path):
    _, val = classifier
    ext = PretrainedFeatureExtractor(precision="fp32").fit()
    serve = runpy.run_path(str(SERVE))
    path = export(ext, tmp_path / "features.onnx")
    meta = json.loads(path.with_suffix(".json").read_text())
    x = np.stack([serve["preprocess"](p, meta["preprocessing"]) for p in val]).astype(np.float32)
    import onnxruntime

    features = onnxruntime.InferenceSession(str(path)).run(None, {"pixel_values": x})[0]
    np.testing.assert_allclose(features, ext.transform(val), **TOL)
    assert meta["outputs"][0]["feature_names"] == ext.get_feature_names_out().tolist()
    # a Pipeline: the network and the logistic regression in one ONNX graph
    y = np.array([Path(p).parent.name for p in val])
    pipe = make_pipeline(PretrainedFeatureExtractor(precision="fp32"), LogisticRegression()).fit(
        val, y
    )
    path = export(pipe, tmp_path / "pipeline.onnx")
    session = onnxruntime.InferenceSession(str(path))
    labels, probabilities = session.run(None, {"pixel_values": x})
    np.testing.assert_allclose(probabilities, pipe.predict_proba(val), **TOL)
    assert labels.tolist() == pipe.predict(val).tolist()
    assert {n.op_type for n in __import__("onnx").load(str(path)).graph.node} >= {"Conv", "LinearClassifier"}


def _tiny(stages):
    return BackboneSpec(module=nn.Sequential(*stages), data_config=DataConfig(input_size=16, resize_size=None))


class _DataDependentBranch(nn.Module):
    """A layer ``torch.export`` cannot capture: Python control flow on tensor values."""

    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def test_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="not fitted"):
        export(PretrainedFeatureExtractor(), tmp_path / "a.onnx")
    ext = PretrainedFeatureExtractor(_tiny([nn.Conv2d(3, 4, 3), nn.ReLU()]), precision="fp32").fit()
    with pytest.raises(ExportError, match="format='tflite'.*onnx"):
        export(ext, tmp_path / "a.tflite", format="tflite")
    with pytest.raises(ExportError, match="LogisticRegression"):
        export(LogisticRegression(), tmp_path / "a.onnx")
    # a layer that cannot be exported is named
    bad = PretrainedFeatureExtractor(
        _tiny([nn.Conv2d(3, 4, 3), _DataDependentBranch(), nn.ReLU()]), precision="fp32"
    ).fit()
    with pytest.raises(ExportError, match="stage '1'"):
        export(bad, tmp_path / "bad.onnx")
    # without onnx installed, the error names the extra
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependencyError, match=r"sktransfer\[onnx\]"):
        export(ext, tmp_path / "b.onnx")


@pytest.mark.parametrize("fmt", ["onnx", "torch.export"])
def test_hugging_face_vision_model(fmt, tmp_path):
    """A Hugging Face ViT (its embedding stage stops the model's own forward at the first
    layer) exports too; fed by ``preprocess``, it gives ``transform``."""
    pytest.importorskip("transformers")
    from _hf_tiny import build_vision
    from _tolerances import FP32_TOLERANCE
    from PIL import Image

    from sktransfer.serving import preprocess

    ext = PretrainedFeatureExtractor(str(build_vision("vit", tmp_path)), precision="fp32").fit()
    path = export(ext, tmp_path / "vit.model", format=fmt)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (40, 36 + 4 * i, 3), dtype=np.uint8)) for i in range(3)
    ]
    x = preprocess(ext, images)
    if fmt == "onnx":
        import onnxruntime

        out = onnxruntime.InferenceSession(str(path)).run(None, {"pixel_values": x})[0]
    else:
        with torch.no_grad():
            out = torch.export.load(str(path)).module()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ext.transform(images), **FP32_TOLERANCE)
