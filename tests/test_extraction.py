"""PretrainedFeatureExtractor: outputs, parameters, sklearn integration and accuracy on real data."""

import copy
import csv
import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import sklearn.exceptions
import torch
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from torch import nn

from sktransfer import BackboneSpec, DataConfig, PretrainedFeatureExtractor, _runtime
from sktransfer.datasets import load_image_folder
from sktransfer.exceptions import BackboneError, ItemLoadError, ItemLoadWarning, NotFittedError
from sktransfer.io import open_image


@pytest.fixture(scope="module")
def folder_features(fitted_extractor, image_paths):
    return fitted_extractor.transform(image_paths)


# --------------------------------------------------------------------------- outputs


def test_output_dtype_shape_and_attributes(fitted_extractor, folder_features, image_paths):
    F = folder_features
    assert F.dtype == np.float32 and F.shape == (len(image_paths), 1280)
    assert np.isfinite(F).all()
    # different images give different features; the two colour classes are far apart
    assert len({row.tobytes() for row in F}) == len(image_paths)
    assert fitted_extractor.n_features_out_ == 1280
    assert fitted_extractor.device_ == torch.device("cpu")
    assert fitted_extractor.precision_ == "fp32"
    assert fitted_extractor.backbone_.name == "efficientnet_lite0"
    assert not fitted_extractor.backbone_.training
    assert not any(p.requires_grad for p in fitted_extractor.backbone_.parameters())


def test_row_order_is_preserved(fitted_extractor, folder_features, image_paths):
    perm = np.random.default_rng(0).permutation(len(image_paths))
    F = fitted_extractor.transform([image_paths[i] for i in perm])
    np.testing.assert_allclose(F, folder_features[perm], rtol=1e-4, atol=1e-4)


def test_batch_size_independence(fitted_extractor, folder_features, image_paths):
    ext = copy.deepcopy(fitted_extractor)
    for batch_size in (1, 3, 64):
        F = ext.set_params(batch_size=batch_size).transform(image_paths)
        np.testing.assert_allclose(F, folder_features, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("layer", "n_features"),
    [("blocks.3", 80), ("blocks.0", 16), (5, 112), (-1, 1280), ("head", 1280), ("stem", 32)],
)
def test_layer(layer, n_features, image_paths, folder_features):
    ext = PretrainedFeatureExtractor(precision="fp32", layer=layer).fit()
    F = ext.transform(image_paths[:3])
    assert F.shape == (3, n_features) and ext.n_features_out_ == n_features
    assert len(ext.get_feature_names_out()) == n_features
    if n_features == 1280:
        np.testing.assert_allclose(F, folder_features[:3], rtol=1e-4, atol=1e-4)


def test_bad_layer_lists_valid_ones():
    with pytest.raises(BackboneError, match="Unknown layer 'blocks.42'") as info:
        PretrainedFeatureExtractor(layer="blocks.42").fit()
    assert "'blocks.3'" in str(info.value) and "'head'" in str(info.value)
    with pytest.raises(BackboneError, match="Valid layers"):
        PretrainedFeatureExtractor(layer=9).fit()


def test_pooling_modes(image_paths, folder_features):
    mx = PretrainedFeatureExtractor(precision="fp32", pooling="max").fit().transform(image_paths[:3])
    assert mx.shape == (3, 1280)
    assert (mx >= folder_features[:3] - 1e-5).all()  # the max is at least the mean
    assert not np.allclose(mx, folder_features[:3])
    ext = PretrainedFeatureExtractor(precision="fp32", layer="blocks.6", pooling="flatten").fit()
    assert ext.transform(image_paths[:2]).shape == (2, 320 * 7 * 7)
    with pytest.raises(BackboneError, match="feature map"):
        PretrainedFeatureExtractor(pooling="token").fit()


def test_feature_names_and_pandas_output(fitted_extractor, folder_features, image_paths):
    names = fitted_extractor.get_feature_names_out()
    assert names.dtype == object and len(names) == 1280
    assert (
        names[0] == "pretrainedfeatureextractor0" and names[-1] == "pretrainedfeatureextractor1279"
    )
    ext = PretrainedFeatureExtractor(precision="fp32").set_output(transform="pandas")
    df = ext.fit_transform(pd.Series(image_paths, name="path"))
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == names.tolist()
    assert df.shape == folder_features.shape
    np.testing.assert_allclose(df.to_numpy(), folder_features, rtol=1e-4, atol=1e-4)


def test_feature_names_in_from_dataframe(image_paths):
    df = pd.DataFrame({"path": image_paths[:2]})
    ext = PretrainedFeatureExtractor(precision="fp32").fit(df)
    assert ext.n_features_in_ == 1
    assert ext.feature_names_in_.tolist() == ["path"]
    with pytest.raises(ValueError, match="feature names"):
        ext.transform(pd.DataFrame({"other": image_paths[:2]}))


# --------------------------------------------------------------------------- estimator protocol


def test_construction_is_cheap_and_stores_params():
    ext = PretrainedFeatureExtractor("no_such_backbone_xyz", layer=3, batch_size=5)
    # nothing loaded or resolved in __init__: no fitted attributes, even for a bad name
    assert [k for k in vars(ext) if k.endswith("_")] == []
    assert ext.get_params()["backbone"] == "no_such_backbone_xyz"
    assert ext.get_params()["layer"] == 3 and ext.get_params()["batch_size"] == 5
    with pytest.raises(BackboneError, match="Unknown backbone"):
        ext.fit()


def test_not_fitted_error(image_paths):
    ext = PretrainedFeatureExtractor()
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ext.transform(image_paths[:1])
    assert issubclass(NotFittedError, sklearn.exceptions.NotFittedError)
    with pytest.raises(sklearn.exceptions.NotFittedError):
        check_is_fitted(ext)


def test_clone_is_unfitted_with_same_params(fitted_extractor):
    ext = copy.deepcopy(fitted_extractor).set_params(layer="blocks.2", pooling="max")
    cloned = clone(ext)
    assert cloned.get_params() == ext.get_params()
    assert not hasattr(cloned, "backbone_") and not hasattr(cloned, "n_features_out_")


@pytest.mark.parametrize(
    ("param", "value"),
    [("batch_size", 0), ("pooling", "median"), ("precision", "int8"), ("on_error", "skip"),
     ("num_workers", -1), ("layer", 1.5)],
)  # fmt: skip
def test_invalid_params_fail_at_fit(param, value):
    ext = PretrainedFeatureExtractor(**{param: value})  # accepted at construction
    with pytest.raises(ValueError, match=param):
        ext.fit()


def test_sparse_and_1d_inputs_are_refused_clearly(fitted_extractor):
    with pytest.raises(TypeError, match="Sparse data was passed"):
        PretrainedFeatureExtractor().fit(scipy.sparse.csr_matrix(np.eye(4)))
    with pytest.raises(ValueError, match="Reshape your data"):
        fitted_extractor.transform(np.arange(64.0))


def test_pickle_and_joblib_round_trip(fitted_extractor, folder_features, image_paths, tmp_path):
    restored = pickle.loads(pickle.dumps(fitted_extractor))
    np.testing.assert_array_equal(restored.transform(image_paths), folder_features)
    joblib.dump(fitted_extractor, tmp_path / "ext.joblib")
    restored = joblib.load(tmp_path / "ext.joblib")
    assert restored.get_params() == fitted_extractor.get_params()
    np.testing.assert_array_equal(restored.transform(image_paths), folder_features)


# --------------------------------------------------------------------------- sklearn composition


def test_pipeline_on_list_of_paths(image_paths, folder_classes, image_labels):
    names = np.array(folder_classes)[image_labels]
    pipe = make_pipeline(PretrainedFeatureExtractor(), LogisticRegression(max_iter=1000))
    pipe.fit(image_paths, names)
    pred = pipe.predict(image_paths)
    assert pred.tolist() == names.tolist()  # red vs blue: trivially separable
    assert pipe.predict_proba(image_paths).shape == (len(image_paths), 2)


@pytest.mark.parametrize("column", ["path", ["path"]])
def test_column_transformer_images_plus_numbers(column, image_paths, image_labels):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "path": image_paths,
            "width": rng.normal(size=len(image_paths)),
            "age": rng.integers(0, 90, len(image_paths)),
        }
    )
    ct = ColumnTransformer(
        [("img", PretrainedFeatureExtractor(), column), ("num", StandardScaler(), ["width", "age"])]
    )
    Z = ct.fit_transform(df)
    assert Z.shape == (len(df), 1280 + 2)
    names = ct.get_feature_names_out()
    assert names[0] == "img__pretrainedfeatureextractor0"
    assert names[-2:].tolist() == ["num__width", "num__age"]
    np.testing.assert_allclose(Z[:, -2:].mean(0), 0.0, atol=1e-6)  # the numbers went through
    pipe = make_pipeline(ct, LogisticRegression(max_iter=1000)).fit(df, image_labels)
    assert (pipe.predict(df) == image_labels).all()
    ct.set_output(transform="pandas")
    out = ct.fit_transform(df)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == names.tolist()


# --------------------------------------------------------------------------- backbones and inputs


def test_user_module_backbone(image_paths):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3))
    spec = BackboneSpec(module=net, data_config=DataConfig(input_size=32, resize_size=None))
    ext = PretrainedFeatureExtractor(spec, precision="fp32").fit()
    F = ext.transform(image_paths)
    assert F.shape == (len(image_paths), 16) and np.isfinite(F).all()
    # the same numbers as running the module by hand on the preprocessed batch
    draft = ext.transform_.draft_size()  # JPEGs may be decoded at reduced size
    x = torch.stack([ext.transform_(open_image(p, draft)) for p in image_paths])
    with torch.no_grad():
        ref = net(x).mean((2, 3)).numpy()
    np.testing.assert_allclose(F, ref, rtol=1e-4, atol=1e-5)
    first_conv = PretrainedFeatureExtractor(spec, layer="0").fit()
    assert first_conv.transform(image_paths[:2]).shape == (2, 8)
    # the user's module is neither frozen nor switched to eval mode
    assert all(p.requires_grad for p in net.parameters()) and net.training
    # a bare module works too, with ImageNet preprocessing at 224
    bare = PretrainedFeatureExtractor(nn.Sequential(nn.Conv2d(3, 4, 3))).fit()
    assert bare.transform_.data_config == DataConfig()
    assert bare.transform(image_paths[:2]).shape == (2, 4)


def test_load_digits(fitted_extractor):
    # float 8x8 images in 0..16 (min-max scaled per image); accuracy on digits is
    # measured by the demo (tests/test_cli.py), this checks the input path
    digits = load_digits()
    F_images = fitted_extractor.transform(digits.images[:12])
    assert F_images.shape == (12, 1280) and F_images.dtype == np.float32
    assert np.isfinite(F_images).all()
    assert len({row.tobytes() for row in F_images}) == 12
    F_flat = fitted_extractor.transform(digits.data[:4])  # (n, 64) rows are 8x8 images
    np.testing.assert_allclose(F_flat, F_images[:4], rtol=1e-4, atol=1e-4)
    F_frame = fitted_extractor.transform(pd.DataFrame(digits.data[:4]))  # a numeric table
    np.testing.assert_allclose(F_frame, F_images[:4], rtol=1e-4, atol=1e-4)


def test_on_error_policy(fitted_extractor, image_paths, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    X = [image_paths[0], str(bad), image_paths[1]]
    with pytest.raises(ItemLoadError, match="bad.png"):
        fitted_extractor.transform(X)
    with pytest.warns(ItemLoadWarning, match="1 of 3 items"):
        F = PretrainedFeatureExtractor(precision="fp32", on_error="warn").fit().transform(X)
    assert np.isnan(F[1]).all()
    np.testing.assert_allclose(
        F[[0, 2]], fitted_extractor.transform([X[0], X[2]]), rtol=1e-5, atol=1e-5
    )


# --------------------------------------------------------------------------- accuracy on real data


@pytest.fixture(scope="module")
def imagenet(imagenet_sample, fitted_extractor):
    with open(imagenet_sample / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [str(imagenet_sample / r["filename"]) for r in rows]
    labels = np.array([int(r["class_index"]) for r in rows])
    return paths, labels, fitted_extractor.transform(paths)


def _top1(ext, features, labels):
    with torch.no_grad():
        logits = ext.backbone_.classifier(torch.from_numpy(features))
    pred = logits.argmax(1).numpy()
    return pred, float((pred == labels).mean())


def test_imagenet_top1(imagenet, fitted_extractor, record_property):
    paths, labels, F = imagenet
    assert len(paths) == 100 and F.shape == (100, 1280)
    _, acc = _top1(fitted_extractor, F, labels)
    record_property("imagenet_top1", acc)
    print(f"ImageNet sample top-1 (fp32): {acc:.2f}")
    assert acc >= 0.85


@pytest.mark.skipif(
    not _runtime.cpu_info()["native_bf16"] and not torch.cuda.is_available(),
    reason="no native bf16 on this CPU: bf16 is emulated there, many times slower",
)
def test_bf16_close_to_fp32(imagenet, fitted_extractor, record_property):
    paths, labels, F32 = imagenet
    ext = PretrainedFeatureExtractor(precision="bf16").fit()
    assert ext.precision_ == "bf16"
    F16 = ext.transform(paths)
    assert F16.dtype == np.float32
    cos = (F16 * F32).sum(1) / (np.linalg.norm(F16, axis=1) * np.linalg.norm(F32, axis=1))
    pred32, _ = _top1(fitted_extractor, F32, labels)
    pred16, acc16 = _top1(ext, F16, labels)
    agree = float((pred16 == pred32).mean())
    record_property("bf16_min_cosine", float(cos.min()))
    record_property("bf16_argmax_agreement", agree)
    print(
        f"bf16 vs fp32: min cosine {cos.min():.4f}, argmax agreement {agree:.2f}, top-1 {acc16:.2f}"
    )
    assert cos.min() > 0.99
    assert agree >= 0.9
    assert not np.array_equal(F16, F32)  # bf16 really ran


def test_hymenoptera_pipeline(hymenoptera, record_property):
    train = load_image_folder(hymenoptera / "train")
    val = load_image_folder(hymenoptera / "val")
    pipe = make_pipeline(PretrainedFeatureExtractor(), LogisticRegression(max_iter=2000))
    pipe.fit(train.data, train.target)
    acc = pipe.score(val.data, val.target)
    record_property("hymenoptera_val_accuracy", acc)
    print(f"hymenoptera val accuracy (features + LogisticRegression): {acc:.3f}")
    assert acc >= 0.93


def test_verbose_0_is_silent_while_loading(capfd):
    """verbose=0 prints nothing: loading MiniLM used to print transformers' "Loading weights"
    progress bar. verbose=1 leaves the libraries' bars on."""
    pytest.importorskip("sentence_transformers")
    quiet = PretrainedFeatureExtractor("all-MiniLM-L6-v2", verbose=0).fit()
    assert quiet.transform(["a short text"]).shape == (1, 384)
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    from huggingface_hub import utils as hub

    assert not hub.are_progress_bars_disabled()  # restored after loading
