"""Hugging Face transformers backbones, on tiny random-weight models built offline.

Every feature is compared with the library's own output for the same weights and the
same input tensors (``output_hidden_states``, ``get_image_features``,
``SentenceTransformer.encode``), never with stored numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

tf = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from _hf_tiny import build_dual, build_sentence_transformer, build_text, build_vision  # noqa: E402
from PIL import Image  # noqa: E402

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor, load_backbone  # noqa: E402
from sktransfer.exceptions import BackboneError, InputError  # noqa: E402

TEXTS = ["a wonderful moving film", "i hated every minute of the dull boring mess", "a cat", "",
         "the quick brown fox jumps over the lazy dog"]  # fmt: skip
LABELS = [1, 0, 1, 0, 1]


def close(ours, ref):
    ref = ref.detach().numpy() if torch.is_tensor(ref) else np.asarray(ref)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)  # the project convention (tests/conftest.py)
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    assert cos.min() >= 0.9999


@pytest.fixture(scope="session")
def hf_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    folders = {k: build_text(k, root) for k in ("bert", "distilbert", "roberta", "gpt2")}
    folders.update({k: build_vision(k, root) for k in ("vit", "dinov2")})
    folders.update({k: build_dual(k, root) for k in ("clip", "siglip")})
    return root, {k: str(v) for k, v in folders.items()}


@pytest.fixture(scope="session")
def folders(hf_root):
    return hf_root[1]


@pytest.fixture(scope="session")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (36 + 4 * i, 44, 3), dtype=np.uint8)) for i in range(4)]


def _library(folder):
    return tf.AutoModel.from_pretrained(folder).eval()


def _masked_mean(h, mask):
    m = mask[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta", "gpt2"])
def test_text_features_equal_the_library(folders, kind):
    ext = PretrainedFeatureExtractor(folders[kind], batch_size=2, precision="fp32").fit(TEXTS)
    bb = ext.backbone_
    assert bb.modality == "text" and bb.stage_names == ["embeddings", "layer.0", "layer.1"]
    batch = ext.transform_(TEXTS)  # the same tokenizer, padded to the longest of all five
    model = _library(folders[kind])
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "token_type_ids" or kind == "bert"},
                    output_hidden_states=True)  # fmt: skip
    h, mask = out.last_hidden_state, batch["attention_mask"]
    # GPT-2 adds no special tokens, so "" has no real token; its row is finite, not compared
    real = mask.sum(1) > 0
    last = h[torch.arange(len(TEXTS)), mask.sum(1) - 1]
    # default: mean over real tokens for encoders, the last real token for a decoder
    feats = ext.transform(TEXTS)
    assert np.isfinite(feats).all()
    close(feats[real.numpy()], (last if kind == "gpt2" else _masked_mean(h, mask))[real])
    for pooling, ref in [("cls", h[:, 0]), ("avg", _masked_mean(h, mask)), ("last", last)]:
        feats = PretrainedFeatureExtractor(folders[kind], pooling=pooling, precision="fp32").fit().transform(TEXTS)
        close(feats[real.numpy()], ref[real])
    # layer= picks a hidden state (the last layer's is last_hidden_state, final norm included)
    for i, ref in enumerate([*out.hidden_states[:-1], h]):
        feats = PretrainedFeatureExtractor(folders[kind], layer=i, pooling="avg", precision="fp32").fit().transform(TEXTS)
        close(feats[real.numpy()], _masked_mean(ref, mask)[real])


def test_gpt2_pads_with_eos(folders):
    tok = load_backbone(folders["gpt2"]).tokenizer
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"


def test_sentence_transformers_folder_uses_its_own_modules(hf_root):
    st = pytest.importorskip("sentence_transformers")
    folder = str(build_sentence_transformer(hf_root[0]))
    ext = PretrainedFeatureExtractor(folder, batch_size=2, precision="fp32").fit(TEXTS)
    assert ext.backbone_.data_config.max_length == 20  # max_seq_length of the folder
    ref = st.SentenceTransformer(folder, device="cpu").encode(TEXTS + ["word " * 50])
    close(ext.transform(TEXTS + ["word " * 50]), ref)  # CLS pooling + Normalize, truncated at 20
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- vision


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_vision_features_equal_the_library(folders, images, kind):
    ext = PretrainedFeatureExtractor(folders[kind], batch_size=3, precision="fp32").fit()
    bb = ext.backbone_
    assert bb.modality == "image" and bb.stage_names == ["embeddings", "layer.0", "layer.1"]
    proc = tf.AutoImageProcessor.from_pretrained(folders[kind])
    assert tuple(bb.data_config.mean) == tuple(proc.image_mean)
    assert tuple(bb.data_config.std) == tuple(proc.image_std)
    assert bb.data_config.interpolation == {2: "bilinear", 3: "bicubic"}[int(proc.resample)]
    x = torch.stack([ext.transform_(im) for im in images])
    with torch.no_grad():
        out = _library(folders[kind])(pixel_values=x, output_hidden_states=True)
    h = out.last_hidden_state
    close(ext.transform(images), h[:, 0])  # the class token after the final norm
    close(PretrainedFeatureExtractor(folders[kind], pooling="avg", precision="fp32").fit().transform(images), h[:, 1:].mean(1))
    for i, ref in enumerate([*out.hidden_states[:-1], h]):
        close(PretrainedFeatureExtractor(folders[kind], layer=i, pooling="cls", precision="fp32").fit().transform(images), ref[:, 0])


def test_preprocessing_follows_the_image_processor(folders):
    """On a square image (no rounding of the crop offset) our transform gives the image
    processor's pixels, up to resampling differences."""
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for kind in ("vit", "dinov2", "clip", "siglip"):
        ext = PretrainedFeatureExtractor(folders[kind], precision="fp32").fit()
        ours = ext.transform_(im)
        ref = tf.AutoImageProcessor.from_pretrained(folders[kind])(images=[im], return_tensors="pt")
        ref = ref["pixel_values"][0]
        assert ours.shape == ref.shape
        assert (ours - ref).abs().mean() < 0.05 * ref.abs().mean(), kind


# --------------------------------------------------------------------------- two towers


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_both_towers_give_the_shared_embedding(folders, images, kind):
    model = _library(folders[kind])
    img = PretrainedFeatureExtractor(folders[kind] + "::vision", batch_size=3, precision="fp32").fit()
    assert PretrainedFeatureExtractor(folders[kind], precision="fp32").fit().backbone_.modality == "image"  # default tower
    x = torch.stack([img.transform_(im) for im in images])
    txt = PretrainedFeatureExtractor(folders[kind] + "::text", batch_size=2, precision="fp32").fit(TEXTS)
    batch = txt.transform_(TEXTS)
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=x).pooler_output
        ref_txt = model.get_text_features(**batch).pooler_output
        vis = model.vision_model(pixel_values=x, output_hidden_states=True)
    close(img.transform(images), ref_img)
    close(txt.transform(TEXTS), ref_txt)
    assert ref_img.shape[1] == ref_txt.shape[1]
    assert len(img.backbone_.stage_names) == 3 and txt.backbone_.stage_names[0] == "embeddings"
    close(PretrainedFeatureExtractor(folders[kind], layer=1, pooling="avg", precision="fp32").fit().transform(images),
          vis.hidden_states[1][:, 1 if kind == "clip" else 0 :].mean(1))  # layer.0  # fmt: skip


def test_one_column_transformer_for_images_and_texts(folders, images):
    import pandas as pd
    from sklearn.compose import ColumnTransformer

    df = pd.DataFrame({"photo": images, "caption": TEXTS[:4]})
    ct = ColumnTransformer([
        ("image", PretrainedFeatureExtractor(folders["clip"] + "::vision", precision="fp32"), "photo"),
        ("text", PretrainedFeatureExtractor(folders["clip"] + "::text", precision="fp32"), "caption"),
    ])  # fmt: skip
    out = ct.fit_transform(df)
    assert out.shape == (4, 48)
    img, txt = out[:, :24], out[:, 24:]
    sims = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    assert np.isfinite(sims).all()  # comparable: one space


def test_tower_errors(folders):
    with pytest.raises(BackboneError, match="one tower"):
        load_backbone(folders["bert"] + "::text")
    with pytest.raises(BackboneError, match="Unknown tower"):
        load_backbone(folders["clip"] + "::audio")


# --------------------------------------------------------------------------- fine-tuning


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("kind", ["bert", "gpt2", "vit", "clip::text"])
def test_finetune_unfreeze_1_trains_only_the_top_layer(folders, images, kind):
    folder = folders[kind.split("::")[0]] + ("::text" if "::" in kind else "")
    X = images if kind == "vit" else TEXTS
    y = LABELS[: len(X)]
    before = [_state(s) for s in load_backbone(folder).stages]
    clf = FineTuneClassifier(
        folder, unfreeze=1, max_epochs=1, batch_size=2, lr=1e-2, backbone_lr_scale=1.0,
        validation_split=None, random_state=0, verbose=0,
    ).fit(X, y)  # fmt: skip
    stages = clf.net_.module_.backbone.stages
    for old, stage in zip(before[:-1], stages[:-1]):
        for k, v in stage.state_dict().items():
            torch.testing.assert_close(v.cpu(), old[k], rtol=0, atol=0)
    changed = [k for k, v in stages[-1].state_dict().items() if not torch.equal(v.cpu(), before[-1][k])]
    assert changed, "the top layer did not train"
    assert clf.predict_proba(X).shape == (len(X), 2)


def test_unfreeze_out_of_range_lists_the_groups(folders):
    with pytest.raises(InputError, match=r"3 stages \['embeddings', 'layer.0', 'layer.1'\].*0 \(head only\) to 3"):
        FineTuneClassifier(folders["bert"], unfreeze=4, max_epochs=1, validation_split=None, verbose=0).fit(
            TEXTS, LABELS
        )


def test_pretrained_false_is_random_with_the_same_layout(folders):
    a, b = load_backbone(folders["vit"]), load_backbone(folders["vit"], pretrained=False)
    assert a.stage_names == b.stage_names and a.data_config == b.data_config
    wa, wb = a.stages[1].state_dict(), b.stages[1].state_dict()
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
