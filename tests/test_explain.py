"""Grad-CAM on trained models: the heatmap must land on the object that decides the class.

Synthetic images: a red or a blue square (the class) and a white square (a distractor,
in every image) on noise, each inside its own random quadrant. A model that learned the
task looks at the coloured square, so its heatmap must peak there and not on the
distractor; the heatmap of the *other* class must not.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from torch import nn  # noqa: E402

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor  # noqa: E402
from sktransfer.backbones import BackboneSpec, DataConfig  # noqa: E402
from sktransfer.exceptions import (  # noqa: E402
    BackboneError,
    InputError,
    MissingDependencyError,
    NotFittedError,
)
from sktransfer.explain import _explained, grad_cam, plot_grad_cam  # noqa: E402

pytest.importorskip("captum")

CLASSES = np.array(["blue", "red"])
COLOURS = {"red": (230, 30, 30), "blue": (30, 30, 230)}


def make_objects(n, size, seed):
    """Images (n, size, size, 3) uint8, labels, object boxes and distractor boxes (r0, c0, r1, c1)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(128, 35, size=(n, size, size, 3))
    y = CLASSES[rng.integers(0, 2, n)]
    side, half = size // 4, size // 2
    boxes = np.zeros((n, 4), int)
    distractors = np.zeros((n, 4), int)
    for i in range(n):
        q_obj, q_dis = rng.choice(4, 2, replace=False)
        for q, out, colour in ((q_obj, boxes, COLOURS[y[i]]), (q_dis, distractors, (235,) * 3)):
            r0 = (q // 2) * half + rng.integers(0, half - side + 1)
            c0 = (q % 2) * half + rng.integers(0, half - side + 1)
            X[i, r0 : r0 + side, c0 : c0 + side] = colour
            out[i] = (r0, c0, r0 + side, c0 + side)
    return np.clip(X, 0, 255).astype(np.uint8), y, boxes, distractors


def quadrant(r, c, size):
    return int(r >= size // 2) * 2 + int(c >= size // 2)


def localisation(cams, boxes, distractors, margin=0):
    """(peak inside the box +- margin, peak in the box's quadrant, more mass on the object
    than on the distractor): fractions of images."""
    size = cams.shape[1]
    in_box = in_quadrant = more_mass = 0
    for cam, (r0, c0, r1, c1), (d0, e0, d1, e1) in zip(cams, boxes, distractors):
        r, c = np.unravel_index(np.argmax(cam), cam.shape)
        in_box += (r0 - margin <= r < r1 + margin) and (c0 - margin <= c < c1 + margin)
        in_quadrant += quadrant(r, c, size) == quadrant(r0, c0, size)
        more_mass += cam[r0:r1, c0:c1].sum() > cam[d0:d1, e0:e1].sum()
    n = len(cams)
    return in_box / n, in_quadrant / n, more_mass / n


def config(size):
    return DataConfig(input_size=size, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3)


def tiny_cnn(size=48, seed=0):
    """A 3-block CNN: a 12 x 12 last feature map at 48 px (fine enough to test the box)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )  # fmt: skip
    return BackboneSpec(module=module, data_config=config(size), name="tiny_cnn")


def lite0(size):
    return BackboneSpec(arch="efficientnet_lite0", data_config=config(size), name=f"lite0@{size}")


@pytest.fixture(scope="module")
def cnn_task():
    X, y, boxes, distractors = make_objects(220, 48, seed=0)
    clf = FineTuneClassifier(
        tiny_cnn(), unfreeze="all", backbone_lr_scale=1.0, lr=3e-3, max_epochs=8,
        validation_split=None, random_state=0, verbose=0,
    ).fit(X[:160], y[:160])  # fmt: skip
    return clf, X[160:], y[160:], boxes[160:], distractors[160:]


@pytest.fixture(scope="module")
def lite0_task():
    """Lite0 at 96 px: its last feature map is 3 x 3, so localisation is by quadrant."""
    X, y, boxes, distractors = make_objects(112, 96, seed=2)
    return X[:80], y[:80], X[80:], y[80:], boxes[80:], distractors[80:]


def test_fine_tuned_cnn_looks_at_the_object(cnn_task):
    """Measured: 60/60 peaks inside the object box (within 4 px, one feature-map cell);
    for the other class, 0/60."""
    clf, X, y, boxes, distractors = cnn_task
    assert (clf.predict(X) == y).mean() > 0.9
    module = clf.net_.module_
    was_training = module.training
    cams = grad_cam(clf, X)
    assert cams.shape == (len(X), 48, 48) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and np.allclose(cams.max(axis=(1, 2)), 1.0)
    in_box, _, more_mass = localisation(cams, boxes, distractors, margin=4)
    assert in_box >= 0.9
    assert more_mass >= 0.9
    # the other class's evidence is not on the object
    other = grad_cam(clf, X, target=np.where(y == "red", "blue", "red"))
    assert localisation(other, boxes, distractors, margin=4)[0] < 0.5
    # no hook left behind, training mode untouched
    assert not any(m._forward_hooks for m in module.modules())
    assert module.training == was_training


def test_lite0_fine_tune_classifier_heatmap_is_on_the_object_quadrant(lite0_task):
    """Measured: peak in the object's quadrant for 31/32 images (chance: 1/4), more mass on
    the object than on the distractor for 30/32; for the other class, 5/32 in the quadrant."""
    X, y, X_test, y_test, boxes, distractors = lite0_task
    clf = FineTuneClassifier(
        lite0(96), lr=1e-2, max_epochs=15, validation_split=None, random_state=0, verbose=0
    ).fit(X, y)
    assert (clf.predict(X_test) == y_test).mean() > 0.9
    cams = grad_cam(clf, X_test, batch_size=40)
    assert cams.shape == (len(X_test), 96, 96)
    _, in_quadrant, more_mass = localisation(cams, boxes, distractors)
    assert in_quadrant >= 0.75
    assert more_mass >= 0.8
    other = grad_cam(clf, X_test, target=np.where(y_test == "red", "blue", "red"), batch_size=40)
    assert localisation(other, boxes, distractors)[1] < 0.5


def test_extractor_and_linear_model_heatmap_is_on_the_object_quadrant(lite0_task):
    """Measured: 30/32 in the object's quadrant, 30/32 more mass on the object."""
    X, y, X_test, y_test, boxes, distractors = lite0_task
    model = make_pipeline(
        PretrainedFeatureExtractor(lite0(96), batch_size=50),
        StandardScaler(),
        LogisticRegression(max_iter=500),
    ).fit(X, y)
    assert model.score(X_test, y_test) > 0.9
    cams = grad_cam(model, X_test, batch_size=40)
    _, in_quadrant, more_mass = localisation(cams, boxes, distractors)
    assert in_quadrant >= 0.75
    assert more_mass >= 0.8


def test_linear_head_reproduces_the_pipeline_decision_function():
    """The torch head built from StandardScaler, PCA(whiten) and coef_/intercept_ gives the
    pipeline's own scores, for binary and multiclass models."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, size=(30, 16, 16, 3), dtype=np.uint8)
    extractor = PretrainedFeatureExtractor(tiny_cnn(16), precision="fp32")
    for y in (rng.integers(0, 2, 30), rng.integers(0, 3, 30)):
        model = make_pipeline(
            extractor, StandardScaler(), PCA(5, whiten=True), LogisticRegression()
        ).fit(X, y)
        ex = _explained(model)
        images = torch.stack([ex.transform(torch.from_numpy(x).permute(2, 0, 1)) for x in X])
        with torch.no_grad():
            logits = ex.net.eval()(images).numpy()
        scores = model.decision_function(X)
        if scores.ndim == 1:  # binary: the head scores [-d/2, d/2]
            np.testing.assert_allclose(logits[:, 1] - logits[:, 0], scores, rtol=1e-4, atol=1e-4)
        else:
            np.testing.assert_allclose(logits, scores, rtol=1e-4, atol=1e-4)


def test_backbone_without_a_spatial_map_is_refused():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))
    spec = BackboneSpec(module=flat, data_config=config(16), name="mlp")
    X = np.random.default_rng(0).integers(0, 255, size=(6, 16, 16, 3), dtype=np.uint8)
    model = make_pipeline(PretrainedFeatureExtractor(spec), LogisticRegression()).fit(X, [0, 1] * 3)
    with pytest.raises(BackboneError, match="spatial feature map.*mlp"):
        grad_cam(model, X)
    # a pooled network: the last stage with a map is used; naming a flat stage is an error
    pooled = nn.Sequential(*tiny_cnn(16).module, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    spec = BackboneSpec(module=pooled, data_config=config(16))
    model = make_pipeline(PretrainedFeatureExtractor(spec), LogisticRegression()).fit(X, [0, 1] * 3)
    assert grad_cam(model, X).shape == (6, 16, 16)
    with pytest.raises(BackboneError, match="stage '12'"):
        grad_cam(model, X, layer="12")


def test_unsupported_estimators_and_targets(cnn_task):
    from sklearn.ensemble import RandomForestClassifier

    clf, X, *_ = cnn_task
    with pytest.raises(TypeError, match="got LogisticRegression"):
        grad_cam(LogisticRegression(), X)
    forest = make_pipeline(PretrainedFeatureExtractor(tiny_cnn(16)), RandomForestClassifier(3))
    forest.fit(X[:6], [0, 1] * 3)
    with pytest.raises(TypeError, match="linear last step"):
        grad_cam(forest, X[:2])
    with pytest.raises(NotFittedError):
        grad_cam(FineTuneClassifier(), X[:2])
    with pytest.raises(InputError, match="not among the model's classes"):
        grad_cam(clf, X[:2], target="green")
    with pytest.raises(InputError, match="one label per image"):
        grad_cam(clf, X[:2], target=["red", "red", "blue"])


def test_missing_captum_says_what_to_install(cnn_task, monkeypatch):
    import sys

    clf, X, *_ = cnn_task
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(MissingDependencyError, match=r"sktransfer\[explain\]"):
        grad_cam(clf, X[:1])


def test_plot_grad_cam_draws_overlays(cnn_task):
    import matplotlib.pyplot as plt

    clf, X, *_ = cnn_task
    fig = plot_grad_cam(clf, X[:5], ncols=3)
    try:
        assert len(fig.axes) == 6  # 2 x 3 grid, the last one blank
        titles = [a.get_title() for a in fig.axes[:5]]
        assert titles == list(clf.predict(X[:5]))
        assert len(fig.axes[0].images) == 2  # image + heatmap
        assert fig.axes[0].images[1].get_alpha() == 0.5
    finally:
        plt.close(fig)
    fig, axes = plt.subplots(1, 2)
    try:
        assert plot_grad_cam(clf, X[:2], target="red", ax=axes, alpha=0.3) is fig
        assert [a.get_title() for a in axes] == ["red", "red"]
        with pytest.raises(InputError, match="one Axes per image"):
            plot_grad_cam(clf, X[:3], ax=axes)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- vision transformers


@pytest.fixture(scope="module")
def vit_task():
    """A random-weight timm test_vit (160 px, patch 16: a 10 x 10 grid after the class
    token), fine-tuned for one epoch on a few images."""
    X, y, *_ = make_objects(8, 48, seed=0)
    clf = FineTuneClassifier(
        "timm/test_vit", pretrained=False, unfreeze=1, max_epochs=1, batch_size=4,
        validation_split=None, random_state=0, verbose=0, precision="fp32",
    ).fit(X, y)  # fmt: skip
    return clf, X


def _stage_and_grads(clf, X, stage_index, columns):
    """Output of stage ``stage_index`` for ``X`` and the gradient of the ``columns`` logits."""
    module = clf.net_.module_
    backbone = module.backbone
    x = torch.stack([clf.transform_(torch.from_numpy(im).permute(2, 0, 1)) for im in X])
    was_training = module.training
    module.eval()
    try:
        out = backbone(x, 0, stage_index + 1).detach().requires_grad_(True)
        logits = module.head(module.pool(backbone(out, stage_index + 1, None)))
        grads = torch.autograd.grad(logits[torch.arange(len(X)), columns].sum(), out)[0]
    finally:
        module.train(was_training)
    return out.detach(), grads


def _upsample_and_scale(cam, size):
    cam = torch.nn.functional.interpolate(cam, (size, size), mode="bilinear")[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo)).view_as(cam).numpy()


def _reference_token_cam(clf, X, stage_index, columns):
    """Grad-CAM from the definition, with plain autograd: the patch tokens of stage
    ``stage_index`` (row-major on their grid, as timm's patch embedding lays them out),
    each channel weighted by its mean gradient."""
    p = clf.backbone_.num_prefix_tokens
    tokens, grads = _stage_and_grads(clf, X, stage_index, columns)
    patches, grads = tokens[:, p:], grads[:, p:]
    side = int(round((tokens.shape[1] - p) ** 0.5))
    cam = torch.relu((grads.mean(dim=1, keepdim=True) * patches).sum(dim=2))
    return _upsample_and_scale(cam.view(len(X), 1, side, side), clf.backbone_.data_config.input_size)


def test_vit_tokens_are_explained_on_their_patch_grid(vit_task):
    clf, X = vit_task
    module = clf.net_.module_
    before = clf.predict_proba(X)
    cams = grad_cam(clf, X)
    size = clf.backbone_.data_config.input_size
    assert cams.shape == (len(X), size, size) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0
    assert all(cam.std() > 1e-3 for cam in cams)  # not constant
    # the default layer is the last token stage (the input of the last block: the last
    # stage pools), and the maps are Grad-CAM's definition on its 10 x 10 patch grid
    names = clf.backbone_.stage_names
    np.testing.assert_allclose(cams, grad_cam(clf, X, layer=names[-2]), rtol=1e-4, atol=1e-4)
    columns = np.searchsorted(clf.classes_, clf.predict(X))
    reference = _reference_token_cam(clf, X, len(names) - 2, torch.as_tensor(columns))
    np.testing.assert_allclose(cams, reference, rtol=1e-4, atol=1e-4)
    # another token stage and a named target work; the model is left as it was
    assert grad_cam(clf, X[:2], target="red", layer="blocks.0").shape == (2, size, size)
    assert not any(m._forward_hooks for m in module.modules())
    np.testing.assert_allclose(clf.predict_proba(X), before, rtol=1e-4, atol=1e-4)
    # the last stage gives the pooled vector: no grid to explain
    with pytest.raises(BackboneError, match=f"stage '{names[-1]}'"):
        grad_cam(clf, X[:1], layer=names[-1])


def test_token_grid_leaves_out_the_prefix_tokens():
    from sktransfer.explain import _token_grid, _TokensAsMap

    assert _token_grid((2, 1 + 49, 8), 1) == (7, 7)
    assert _token_grid((2, 5 + 16, 8), 5) == (4, 4)  # class + 4 register tokens
    assert _token_grid((2, 1 + 48, 8), 1) is None  # not a square grid
    assert _token_grid((2, 1 + 1, 8), 1) is None  # a single position
    assert _token_grid((2, 8), 1) is None and _token_grid((2, 8, 4, 4), 1) is None
    # the reshape round trip leaves the tokens as they were
    tokens = torch.randn(3, 5 + 16, 8)
    wrapped = _TokensAsMap(nn.Identity(), 5, (4, 4))
    torch.testing.assert_close(wrapped(tokens), tokens, rtol=0, atol=0)
    fmap = wrapped.grid(tokens[:, 5:])
    assert fmap.shape == (3, 8, 4, 4)
    torch.testing.assert_close(fmap[:, :, 1, 2], tokens[:, 5 + 1 * 4 + 2], rtol=0, atol=0)


def _reference_map_cam(clf, X, stage_index, columns):
    """Grad-CAM from the definition on the (N, C, H, W) output of stage ``stage_index``."""
    fmap, grads = _stage_and_grads(clf, X, stage_index, columns)
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * fmap).sum(1, keepdim=True))
    return _upsample_and_scale(cam, clf.backbone_.data_config.input_size)


def test_swin_fine_tunes_and_is_explained_on_its_channels_first_maps():
    # before: fitting failed with "required rank 4 tensor to use channels_last format"
    # (the traced Swin holds 5-D attention-mask constants that Module.to(memory_format=)
    # tried to convert)
    import timm

    from sktransfer._sources.timm import wrap

    torch.manual_seed(0)
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, embed_dim=16, depths=(2, 2, 2, 2),
        num_heads=(1, 1, 1, 1),
    )  # fmt: skip
    backbone = wrap(swin, "timm/swin_tiny_patch4_window7_224")
    assert any(b.dim() == 5 for b in backbone.buffers())
    X, y, *_ = make_objects(6, 48, seed=1)
    clf = FineTuneClassifier(
        backbone, unfreeze=1, max_epochs=1, batch_size=3, validation_split=None,
        random_state=0, verbose=0, precision="fp32",
    ).fit(X, y)  # fmt: skip
    names = clf.backbone_.stage_names
    cams = grad_cam(clf, X[:3], layer=names[-2])
    assert cams.shape == (3, 224, 224) and all(cam.std() > 1e-3 for cam in cams)
    columns = torch.as_tensor(np.searchsorted(clf.classes_, clf.predict(X[:3])))
    reference = _reference_map_cam(clf, X[:3], len(names) - 2, columns)
    np.testing.assert_allclose(cams, reference, rtol=1e-4, atol=1e-4)


def test_hugging_face_vit_tokens_are_explained_on_their_patch_grid(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _hf_tiny import build_vision

    torch.manual_seed(0)
    folder = build_vision("vit", tmp_path)
    X, y, *_ = make_objects(6, 48, seed=2)
    clf = FineTuneClassifier(
        str(folder), unfreeze=1, max_epochs=1, batch_size=3, validation_split=None,
        random_state=0, verbose=0, precision="fp32",
    ).fit(X, y)  # fmt: skip
    names = clf.backbone_.stage_names
    cams = grad_cam(clf, X[:3])
    size = clf.backbone_.data_config.input_size
    assert cams.shape == (3, size, size) and all(cam.std() > 1e-3 for cam in cams)
    columns = torch.as_tensor(np.searchsorted(clf.classes_, clf.predict(X[:3])))
    reference = _reference_token_cam(clf, X[:3], len(names) - 2, columns)
    np.testing.assert_allclose(cams, reference, rtol=1e-4, atol=1e-4)
