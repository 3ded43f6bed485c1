"""FineTuneClassifier: freeze semantics, sklearn contract, determinism, bad input.

Most tests run the real bundled Lite0 weights at a reduced input size (64 px)
to keep CI fast; the acceptance run on hymenoptera at full size is marked slow.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from _tolerances import FP32_TOLERANCE
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, cross_val_score
from skorch.callbacks import Callback
from torch import nn

from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier, load_backbone
from sktransfer.exceptions import InputError, TrainingDivergedError

SMALL = BackboneSpec(
    arch="efficientnet_lite0",
    data_config=DataConfig(input_size=64, resize_size=None, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3),
)


def _images(n=24, seed=0):
    """Two visually different classes: bright vertical vs dark horizontal stripes, with noise."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, 48, 48, 3), dtype=np.uint8)
    y = np.array(["stripes_v", "stripes_h"] * (n // 2))
    grid = np.indices((48, 48))
    for i in range(n):
        axis = 1 if y[i] == "stripes_v" else 0
        base = ((grid[axis] // 6) % 2) * (200 if axis else 120)
        X[i] = np.clip(base[..., None] + rng.normal(0, 20, (48, 48, 3)), 0, 255)
    return X, y


def _clf(**kw):
    params = dict(backbone=SMALL, max_epochs=2, batch_size=8, verbose=0, random_state=0, validation_split=None)
    params.update(kw)
    return FineTuneClassifier(**params)


@pytest.fixture(scope="module")
def data():
    return _images()


# --------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("unfreeze", [0, 1, 2, "all"])
def test_freeze_semantics(data, unfreeze):
    X, y = data
    clf = _clf(unfreeze=unfreeze, warmup_epochs=0).fit(X, y)
    net = clf.net_.module_
    stages = net.backbone.stages
    n = len(stages)
    n_train = n if unfreeze == "all" else unfreeze
    assert clf.n_frozen_ == n - n_train
    fresh = load_backbone(SMALL)
    for i, stage in enumerate(stages):
        trainable = i >= n - n_train
        assert all(p.requires_grad == trainable for p in stage.parameters()), (i, unfreeze)
        if not trainable:
            # frozen stages: weights and BatchNorm running statistics unchanged by training
            ref = fresh.stages[i].state_dict()
            for k, v in stage.state_dict().items():
                assert torch.equal(v.cpu(), ref[k]), (i, k)
    # the optimizer holds exactly the trainable parameters
    opt_params = {id(p) for g in clf.net_.optimizer_.param_groups for p in g["params"]}
    trainable_params = {id(p) for p in net.parameters() if p.requires_grad}
    assert opt_params == trainable_params
    # frozen BatchNorm layers stay in eval mode even when the net is in train mode
    net.train()
    for i, stage in enumerate(stages):
        bns = [m for m in stage.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert all(bn.training == (i >= n - n_train) for bn in bns)
    net.eval()


def test_unfrozen_stages_train_at_lower_lr(data):
    X, y = data
    # a constant schedule keeps the configured rates in the optimizer after fit
    clf = _clf(unfreeze=1, lr=1e-3, backbone_lr_scale=0.1, lr_schedule="constant").fit(X, y)
    lrs = sorted(g["lr"] for g in clf.net_.optimizer_.param_groups)
    assert lrs == pytest.approx([1e-4, 1e-3])
    fresh = load_backbone(SMALL)
    top = clf.net_.module_.backbone.stages[-1]
    changed = any(
        not torch.equal(v.cpu(), fresh.stages[-1].state_dict()[k])
        for k, v in top.state_dict().items()
        if v.dtype.is_floating_point
    )
    assert changed, "the unfrozen top stage did not train"


# a random-weight ViT of 6 blocks: layer-wise tests fit in a fraction of a second
TINY_VIT = {
    "backbone": "timm/test_vit",
    "pretrained": False,
    "max_epochs": 1,
    "lr_schedule": "constant",  # the optimizer keeps the configured rates after fit
}
LR_TOL = {"rel": 1e-4, "abs": 1e-12}


def _group_lrs_by_stage(clf):
    """{stage index, "head" or "other": learning rate} of the optimizer's param groups.

    "other" would be a backbone parameter outside the stages (the pretrained classifier)."""
    net = clf.net_.module_
    stage_of = {id(p): i for i, st in enumerate(net.backbone.stages) for p in st.parameters()}
    in_backbone = {id(p) for p in net.backbone.parameters()}
    lrs = {}
    for group in clf.net_.optimizer_.param_groups:
        for p in group["params"]:
            key = stage_of.get(id(p), "other" if id(p) in in_backbone else "head")
            lrs.setdefault(key, set()).add(group["lr"])
    assert all(len(v) == 1 for v in lrs.values()), lrs  # one rate per stage
    return {k: v.pop() for k, v in lrs.items()}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_layer_decay_scales_each_unfrozen_stage(data, optimizer):
    X, y = data
    kw = {"optimizer__momentum": 0.5} if optimizer == "sgd" else {}
    clf = _clf(
        **TINY_VIT, unfreeze=3, lr=1e-3, backbone_lr_scale=0.1, layer_decay=0.5,
        optimizer=optimizer, **kw,
    ).fit(X, y)
    n = len(clf.backbone_.stage_names)
    lrs = _group_lrs_by_stage(clf)
    assert set(lrs) == {"head", n - 1, n - 2, n - 3}  # no "other": the classifier never trains
    assert lrs["head"] == pytest.approx(1e-3, **LR_TOL)
    assert lrs[n - 1] == pytest.approx(1e-4, **LR_TOL)
    assert lrs[n - 2] == pytest.approx(5e-5, **LR_TOL)
    assert lrs[n - 3] == pytest.approx(2.5e-5, **LR_TOL)
    # the optimizer still holds exactly the trainable parameters, and skorch's
    # optimizer__ parameters reach every group
    net = clf.net_.module_
    groups = clf.net_.optimizer_.param_groups
    assert {id(p) for g in groups for p in g["params"]} == {
        id(p) for p in net.parameters() if p.requires_grad
    }
    if optimizer == "sgd":
        assert all(g["momentum"] == 0.5 for g in groups)
    assert all(g["weight_decay"] == pytest.approx(1e-4, **LR_TOL) for g in groups)


def test_layer_decay_with_unfreeze_all(data):
    X, y = data
    clf = _clf(**TINY_VIT, unfreeze="all", lr=1e-2, backbone_lr_scale=1.0, layer_decay=0.8)
    lrs = _group_lrs_by_stage(clf.fit(X, y))
    n = len(clf.backbone_.stage_names)
    for i in range(n):
        assert lrs[i] == pytest.approx(1e-2 * 0.8 ** (n - 1 - i), **LR_TOL), i


def test_layer_decay_one_keeps_the_two_groups(data):
    X, y = data
    default = _clf(**TINY_VIT, unfreeze=2).fit(X, y)
    off = _clf(**TINY_VIT, unfreeze=2, layer_decay=1.0).fit(X, y)
    n = len(default.backbone_.stage_names)
    for clf in (default, off):
        groups = clf.net_.optimizer_.param_groups
        assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4], **LR_TOL)
        names = {id(p): name for name, p in clf.net_.module_.named_parameters()}
        head, body = ([names[id(p)] for p in g["params"]] for g in groups)
        assert not any(name.startswith("backbone.") for name in head)
        top = (f"backbone.stages.{n - 2}.", f"backbone.stages.{n - 1}.")
        assert all(name.startswith(top) for name in body)
    np.testing.assert_allclose(default.predict_proba(X), off.predict_proba(X), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.5])
def test_invalid_layer_decay_is_refused_at_fit(data, bad):
    from sklearn.utils._param_validation import InvalidParameterError

    X, y = data
    clf = _clf(**TINY_VIT, layer_decay=bad)  # __init__ stores it untouched
    assert clf.layer_decay == bad
    with pytest.raises(InvalidParameterError, match="layer_decay"):
        clf.fit(X, y)


def test_layer_decay_is_a_searchable_parameter(data):
    clf = _clf(**TINY_VIT, unfreeze=2, layer_decay=0.5)
    assert clf.get_params()["layer_decay"] == 0.5
    c = clone(clf).set_params(layer_decay=0.75)
    assert c.layer_decay == 0.75 and clone(c).get_params()["layer_decay"] == 0.75
    X, y = data
    search = GridSearchCV(_clf(**TINY_VIT, unfreeze=2), {"layer_decay": [1.0, 0.5]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["layer_decay"] in (1.0, 0.5)
    best = search.best_estimator_
    assert best.layer_decay == search.best_params_["layer_decay"]
    assert len(best.net_.optimizer_.param_groups) == (2 if best.layer_decay == 1.0 else 3)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_two_phase_training_unfreezes_after_warmup(data):
    X, y = data
    clf = _clf(unfreeze=2, warmup_epochs=1, max_epochs=3).fit(X, y)
    assert len(clf.history_) == 3
    assert clf.net_.module_.n_frozen == clf.n_frozen_ == len(clf.backbone_.stage_names) - 2
    assert len(clf.net_.optimizer_.param_groups) == 2


def test_cached_and_uncached_paths_agree(data):
    X, y = data
    a = _clf(unfreeze=1, max_epochs=3).fit(X, y)
    b = _clf(unfreeze=1, max_epochs=3, cache_frozen=False).fit(X, y)
    assert a.input_stage_ > 0 and b.input_stage_ == 0
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-4)
    np.testing.assert_allclose(a.history_[:, "train_loss"], b.history_[:, "train_loss"], rtol=1e-4)


# --------------------------------------------------------------------------- sklearn contract


def test_string_labels_predict_and_score(data):
    X, y = data
    clf = _clf(max_epochs=15, lr=1e-2).fit(X, y)
    assert clf.classes_.tolist() == ["stripes_h", "stripes_v"]
    pred = clf.predict(X)
    assert set(pred) <= set(clf.classes_)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    assert clf.score(X, y) >= 0.9


def test_determinism_with_random_state(data):
    X, y = data
    p1 = _clf(unfreeze=1, random_state=3).fit(X, y).predict_proba(X)
    p2 = _clf(unfreeze=1, random_state=3).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(p1, p2)
    p3 = _clf(unfreeze=1, random_state=4).fit(X, y).predict_proba(X)
    assert not np.array_equal(p1, p3)


def test_pickle_and_joblib_round_trip(data, tmp_path):
    X, y = data
    clf = _clf(unfreeze=1).fit(X, y)
    expected = clf.predict_proba(X)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), expected)
    joblib.dump(clf, tmp_path / "clf.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "clf.joblib").predict_proba(X), expected)


def test_clone_and_skorch_prefixed_params():
    clf = FineTuneClassifier(optimizer="sgd", optimizer__momentum=0.9, unfreeze=2)
    params = clf.get_params()
    assert params["optimizer__momentum"] == 0.9 and params["unfreeze"] == 2
    c = clone(clf)
    assert c.get_params()["optimizer__momentum"] == 0.9
    c.set_params(iterator_train__drop_last=True, unfreeze="all")
    assert c.get_params()["iterator_train__drop_last"] is True and c.unfreeze == "all"
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(c))
    assert "kwargs" not in FineTuneClassifier().get_params()


def test_unknown_parameters_are_refused_by_set_params_and_fit(data):
    X, y = data
    with pytest.raises(ValueError, match="Invalid parameter 'momentum'"):
        FineTuneClassifier().set_params(momentum=0.9)
    clf = FineTuneClassifier(momentum=0.9)  # __init__ stores, as in scikit-learn
    assert clf.get_params()["momentum"] == 0.9
    with pytest.raises(TypeError, match="prefixes"):  # fit checks (also a ValueError)
        clf.fit(X, y)
    assert not hasattr(clf, "classes_")


def test_skorch_params_reach_the_optimizer(data):
    X, y = data
    clf = _clf(optimizer="sgd", optimizer__momentum=0.5).fit(X, y)
    assert isinstance(clf.net_.optimizer_, torch.optim.SGD)
    assert clf.net_.optimizer_.param_groups[0]["momentum"] == 0.5


def test_grid_search_over_freeze_depth(data):
    X, y = data
    search = GridSearchCV(_clf(max_epochs=2), {"unfreeze": [0, 1], "lr": [1e-3, 1e-2]}, cv=2, n_jobs=1)
    search.fit(X, y)
    assert search.best_params_["unfreeze"] in (0, 1)
    assert len(search.cv_results_["mean_test_score"]) == 4
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_grid_search_two_processes(data):
    X, y = data
    search = GridSearchCV(_clf(max_epochs=1), {"unfreeze": [0, 1]}, cv=2, n_jobs=2)
    search.fit(X, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_cross_val_score(data):
    X, y = data
    scores = cross_val_score(_clf(max_epochs=10, lr=1e-2), X, y, cv=2)
    assert scores.shape == (2,) and scores.mean() >= 0.75


def test_partial_fit_continues_training(data):
    X, y = data
    clf = _clf(max_epochs=2)
    clf.partial_fit(X, y)
    assert len(clf.history_) == 2
    clf.partial_fit(X, y)
    assert len(clf.history_) == 4


def test_validation_split_and_early_stopping(data):
    X, y = data
    # a fixed depth: with unfreeze="auto" the hold-out chooses the depth and the refit has none
    clf = _clf(unfreeze=1, max_epochs=30, validation_split=0.25, early_stopping=2, lr=0.05)
    clf.fit(X, y)
    h = clf.history_
    assert "valid_loss" in h[-1] and "valid_acc" in h[-1]
    assert len(h) < 30, "early stopping should stop a 30-epoch run on an easy task"


def test_explicit_validation_data(data):
    X, y = data
    clf = _clf(validation_split=(X[:6], y[:6])).fit(X[6:], y[6:])
    assert "valid_loss" in clf.history_[-1]


def test_mlp_head_and_module_head(data):
    X, y = data
    clf = _clf(head=(32, 16), head_dropout=0.5).fit(X, y)
    linears = [m for m in clf.net_.module_.head.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [32, 16, 2]
    clf2 = _clf(head=nn.Sequential(nn.Linear(1280, 2))).fit(X, y)
    assert clf2.predict(X).shape == (len(X),)


def test_class_weight(data):
    X, y = data
    clf = _clf(class_weight="balanced").fit(X[:18], y[:18])
    w = clf.net_.criterion_.weight
    assert w is not None and w.shape == (2,)


def test_user_module_from_scratch_on_digits():
    digits = load_digits()
    X, y = digits.images, digits.target
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    train, test = idx[:1200], idx[1200:]
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
    )  # fmt: skip
    spec = BackboneSpec(
        module=net,
        data_config=DataConfig(input_size=8, resize_size=None, mean=(0.5,), std=(0.5,), in_chans=1),
    )
    clf = FineTuneClassifier(
        spec, pretrained=False, unfreeze="all", lr=3e-3, max_epochs=15, batch_size=64,
        validation_split=None, random_state=0, verbose=0, lr_schedule="constant",
        label_smoothing=0.0,
    ).fit(X[train], y[train])  # fmt: skip
    acc = clf.score(X[test], y[test])
    print(f"user CNN from scratch on digits: test accuracy {acc:.3f}")
    assert acc >= 0.9
    # the user's own module object was not modified (the estimator works on a copy)
    assert all(p.device.type == "cpu" for p in net.parameters())


# --------------------------------------------------------------------------- bad input


def _fails_before_training(clf, X, y, match):
    with pytest.raises(InputError, match=match):
        clf.fit(X, y)
    assert not hasattr(clf, "net_")


def test_single_class_is_rejected(data):
    X, _ = data
    _fails_before_training(_clf(), X, ["a"] * len(X), "only one class")


def test_length_mismatch_is_rejected(data):
    X, y = data
    _fails_before_training(_clf(), X, y[:-1], "items but y has")


def test_unknown_freeze_depth_lists_valid_range(data):
    X, y = data
    n = len(load_backbone(SMALL, pretrained=False).stage_names)
    _fails_before_training(_clf(unfreeze=n + 5), X, y, f"from 0 .head only. to {n}")


def test_validation_split_too_small(data):
    X, y = data
    _fails_before_training(_clf(validation_split=0.05), X[:8], y[:8], "too small to stratify")


class _NaNHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1280, 2)

    def forward(self, x):
        return self.fc(x) * float("nan")


def test_non_finite_loss_stops_with_clear_error(data):
    X, y = data
    with pytest.raises(TrainingDivergedError, match="loss became nan"):
        _clf(head=_NaNHead(), max_epochs=2).fit(X, y)


# --------------------------------------------------------------------------- the estimator front


def _fitted_names(est):
    return sorted(k for k in vars(est) if k.endswith("_") and not k.startswith("_"))


def test_optimizer_param_groups_apply_on_top_of_the_lr_groups(data):
    X, y = data
    clf = _clf(
        unfreeze=1,
        lr=1e-3,
        backbone_lr_scale=0.1,
        lr_schedule="constant",  # the learning rates are read after the fit
        optimizer__param_groups=[("head.*", {"lr": 0.05}), ("*.bias", {"weight_decay": 0.0})],
    ).fit(X, y)
    net = clf.net_.module_
    group_of = {id(p): g for g in clf.net_.optimizer_.param_groups for p in g["params"]}
    assert set(group_of) == {id(p) for p in net.parameters() if p.requires_grad}
    assert group_of[id(net.head.weight)]["lr"] == pytest.approx(0.05)
    assert group_of[id(net.head.bias)]["lr"] == pytest.approx(0.05)  # first pattern wins
    top = net.backbone.stages[-1]
    for name, p in top.named_parameters():
        group = group_of[id(p)]
        assert group["lr"] == pytest.approx(1e-4), name  # the backbone rate stays
        assert group["weight_decay"] == (0.0 if name.endswith("bias") else 1e-4), name


def test_fp16_is_never_silently_bf16(monkeypatch):
    # a GPU with bf16 (patched: no GPU here) still gets the fp16 it was asked for
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert FineTuneClassifier(precision="fp16")._amp_dtype(cuda) == "fp16"
    assert FineTuneClassifier(precision="auto")._amp_dtype(cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert FineTuneClassifier(precision="auto")._amp_dtype(cuda) == "fp16"


def test_fp16_trains_with_a_gradient_scaler(data):
    X, y = data
    seen = []

    class GradNorms(Callback):
        def on_grad_computed(self, net, named_parameters, **kw):
            grads = [p.grad for _, p in named_parameters if p.grad is not None]
            seen.append(max(g.abs().max().item() for g in grads))

    clf = _clf(precision="fp16", unfreeze=1, max_epochs=2, callbacks=[GradNorms()]).fit(X, y)
    assert clf.net_.amp_dtype == "fp16"
    scaler = clf.net_.grad_scaler_
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert scaler.get_scale() > 1  # the loss was scaled ...
    finite = [g for g in seen if np.isfinite(g)]  # a step whose gradients overflowed is skipped
    assert finite and 0 < max(finite) < 100  # ... and the callbacks saw unscaled gradients
    assert np.isfinite(clf.history_[:, "train_loss"]).all()
    assert np.isfinite(clf.predict_proba(X)).all()
    assert _clf(precision="fp32", max_epochs=1).fit(X, y).net_.grad_scaler_ is None


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function", "score"])
def test_use_before_fit_is_not_fitted_error(data, method):
    from sklearn.exceptions import NotFittedError

    X, y = data
    args = (X, y) if method == "score" else (X,)
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(_clf(), method)(*args)


def _fails_with_nothing_fitted(clf, X, y, error, match):
    with pytest.raises(error, match=match):
        clf.fit(X, y)
    assert _fitted_names(clf) == []


def test_failed_fit_sets_no_fitted_attribute(data):
    X, y = data
    n = len(load_backbone(SMALL, pretrained=False).stage_names)
    # each fails after the labels were read (and the net built, for the last one)
    _fails_with_nothing_fitted(_clf(validation_split=0.05), X[:8], y[:8], InputError, "stratify")
    _fails_with_nothing_fitted(_clf(unfreeze=n + 1), X, y, InputError, "out of range")
    _fails_with_nothing_fitted(_clf(head=_NaNHead()), X, y, TrainingDivergedError, "nan")


def test_failed_refit_keeps_the_previous_model(data):
    X, y = data
    clf = _clf(max_epochs=1).fit(X, y)
    before = {k: getattr(clf, k) for k in _fitted_names(clf)}
    proba = clf.predict_proba(X)
    with pytest.raises(InputError, match="out of range"):
        clf.set_params(unfreeze=99).fit(X, np.where(y == y[0], "p", "q"))
    assert _fitted_names(clf) == sorted(before)
    assert all(getattr(clf, k) is v for k, v in before.items())
    assert clf.classes_.tolist() == ["stripes_h", "stripes_v"]
    np.testing.assert_array_equal(clf.predict_proba(X), proba)


def test_partial_fit_failures(data):
    X, y = data
    clf = _clf(head=_NaNFromSecondEpoch(), max_epochs=1).partial_fit(X, y)  # 3 good batches
    # an error before training changes nothing
    with pytest.raises(InputError, match="not in the classes"):
        clf.partial_fit(X, np.where(y == y[0], "new", y))
    assert len(clf.history_) == 1 and np.isfinite(clf.predict_proba(X)).all()
    # an error during training leaves half-updated weights: the estimator is unfitted
    with pytest.raises(TrainingDivergedError):
        clf.partial_fit(X, y)
    assert _fitted_names(clf) == []


def test_prediction_does_not_change_the_estimator(data, tmp_path):
    X, y = data
    clf = _clf(max_epochs=1).fit(X[:16], y[:16])  # no memory at fit: no cache keys
    assert clf.prefix_keys_ is None
    clf.set_params(memory=str(tmp_path))
    before = dict(vars(clf))
    proba = clf.predict_proba(X[16:])
    clf.predict(X[16:]), clf.decision_function(X[16:]), clf.score(X[16:], y[16:])
    assert vars(clf).keys() == before.keys()
    assert all(vars(clf)[k] is v for k, v in before.items())
    assert clf.prefix_keys_ is None
    np.testing.assert_allclose(clf.predict_proba(X[16:]), proba, rtol=1e-4, atol=1e-4)


def _n_cached(folder):
    return sum(1 for p in Path(folder).rglob("*.npy"))


def test_prediction_with_memory_computes_only_the_fitted_cut(data, tmp_path):
    from sktransfer.cache import stats

    X, y = data
    train, new = slice(0, 16), slice(16, 24)
    clf = _clf(max_epochs=1, memory=str(tmp_path), unfreeze=1).fit(X[train], y[train])
    assert len(clf.prefix_keys_) == 3  # the fit stores 3 cuts, for a search over unfreeze
    assert _n_cached(tmp_path) == 3 * 16
    stats(reset=True)
    proba = clf.predict_proba(X[new])
    assert _n_cached(tmp_path) == 3 * 16 + 8  # one cut per new image
    assert stats(reset=True) == {"hits": 0, "misses": 8}
    np.testing.assert_allclose(clf.predict_proba(X[new]), proba, rtol=1e-4, atol=1e-4)
    clf.predict(X[train])
    assert stats() == {"hits": 8 + 16, "misses": 0} and _n_cached(tmp_path) == 3 * 16 + 8
    # the same model without the cache
    plain = _clf(max_epochs=1, unfreeze=1).fit(X[train], y[train])
    np.testing.assert_allclose(plain.predict_proba(X[new]), proba, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_unreadable_file_says_what_applies_to_fine_tuning(image_paths, image_labels, tmp_path, kind):
    from sktransfer.exceptions import ItemLoadError

    bad = tmp_path / "bad.png"
    if kind == "corrupt":
        bad.write_bytes(b"not a png")
    X = list(image_paths) + [str(bad)]
    y = list(image_labels) + [0]
    clf = _clf(max_epochs=1, batch_size=4)
    with pytest.raises(ItemLoadError) as info:
        clf.fit(X, y)
    msg = str(info.value)
    assert "on_error='warn'" not in msg and "bad.png" in msg, msg
    assert f"item {len(X) - 1} of X" in msg and "labels in y" in msg, msg
    assert "FineTuneClassifier reads every item during fit" in msg, msg
    assert info.value.index == len(X) - 1
    assert _fitted_names(clf) == []
    clf.fit(image_paths, image_labels)
    with pytest.raises(ItemLoadError, match="during prediction") as info:
        clf.predict(X)
    assert "on_error='warn'" not in str(info.value)


def test_decision_function_is_one_column_for_two_classes(data):
    X, y = data
    clf = _clf(max_epochs=1).fit(X, y)
    scores = clf.decision_function(X)
    assert scores.shape == (len(X),)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[(scores > 0).astype(int)])
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-scores)), rtol=1e-4, atol=1e-6)
    y3 = np.array(["a", "b", "c"] * 8)
    scores3 = _clf(max_epochs=1).fit(X, y3).decision_function(X)
    assert scores3.shape == (len(X), 3)


def test_labels_are_checked_as_scikit_learn_does(data):
    from sklearn.exceptions import DataConversionWarning

    X, y = data
    with pytest.warns(DataConversionWarning):
        clf = _clf(max_epochs=1).fit(X, y.reshape(-1, 1))
    assert clf.classes_.tolist() == ["stripes_h", "stripes_v"]
    with pytest.raises(ValueError, match="requires y to be passed, but the target y is None"):
        _clf().fit(X, None)
    with pytest.raises(ValueError, match="one class"):
        _clf().fit(X[:1], y[:1])


def _user_module():
    torch.manual_seed(123)  # not a seed the fits use: a re-initialised copy differs from it
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)
    )


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}, [
        (m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in module.modules()
    ]


def _same(a, b):
    return a[1] == b[1] and a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def test_fit_leaves_the_user_backbone_unchanged(data):
    from sktransfer import PretrainedFeatureExtractor

    X, y = data
    net = _user_module()
    spec = BackboneSpec(module=net, data_config=DataConfig(input_size=16, resize_size=None))
    before = _snapshot(net)
    clf = _clf(backbone=spec, unfreeze="all", max_epochs=2, lr=1e-2).fit(X, y)
    trained = clf.backbone_.stages[0].weight
    assert not torch.equal(trained, net[0].weight)  # the copy trained, the user's module did not
    assert _same(_snapshot(net), before)
    for backbone in (spec, net):
        PretrainedFeatureExtractor(backbone, pooling="avg").fit().transform(X[:4])
        assert _same(_snapshot(net), before)


def test_pretrained_false_reinitialises_given_modules(data):
    from sktransfer.exceptions import BackboneError

    net = _user_module()
    before = _snapshot(net)
    spec = BackboneSpec(module=net, data_config=DataConfig(input_size=16, resize_size=None))
    for given in (net, spec, load_backbone(spec)):
        torch.manual_seed(1)
        bb = load_backbone(given, pretrained=False)
        assert not torch.equal(bb.stages[0].weight, net[0].weight)
        assert _same(_snapshot(net), before)  # on a copy
        torch.manual_seed(1)
        assert torch.equal(load_backbone(given, pretrained=False).stages[0].weight, bb.stages[0].weight)
    X, y = data
    clf = _clf(backbone=spec, pretrained=False, max_epochs=1).fit(X, y)  # frozen: stays as drawn
    assert not torch.equal(clf.backbone_.stages[0].weight, net[0].weight)
    assert torch.equal(_clf(backbone=spec, max_epochs=1).fit(X, y).backbone_.stages[0].weight, net[0].weight)

    class WithBareParameter(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.conv(x) * self.scale

    with pytest.raises(BackboneError, match=r"cannot re-initialise .*\['scale'\]"):
        load_backbone(WithBareParameter(), pretrained=False)


# --------------------------------------------------------------------------- acceptance


@pytest.mark.slow
def test_hymenoptera_acceptance(shared_data):
    """The default recipe reaches >= 0.95 val accuracy (published ResNet-18 best: 0.961;
    benchmarks/recipe_candidates.py: 0.954 mean of 3 seeds, 0.961 with seed 0)."""
    from sktransfer import load_image_folder

    tr = load_image_folder(shared_data / "hymenoptera" / "train")
    va = load_image_folder(shared_data / "hymenoptera" / "val")
    t = time.time()
    clf = FineTuneClassifier(random_state=0, verbose=0).fit(tr.data, tr.target)
    acc = clf.score(va.data, va.target)
    print(f"hymenoptera default fine-tune (unfreeze_={clf.unfreeze_}): val accuracy {acc:.3f} "
          f"in {time.time() - t:.0f}s")
    assert acc >= 0.95


# --------------------------------------------------------------------------- checkpoints


class KillDuringEpoch(Callback):
    """Hard-kills the process in the middle of epoch ``$SKTRANSFER_TEST_KILL_EPOCH`` (when
    set). The same callback, with the same settings, is in the resumed run: the same fit."""

    def on_batch_end(self, net, **kw):
        if len(net.history) == int(os.environ.get("SKTRANSFER_TEST_KILL_EPOCH", -1)):
            os._exit(17)  # a hard kill in the middle of this epoch


_KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
from test_finetune import KillDuringEpoch, _clf, _images

X, y = _images()
_clf(max_epochs=5, unfreeze=1, precision="fp32", checkpoint_dir={ckpt!r},
     callbacks=[KillDuringEpoch()]).fit(X, y)
"""


def _checkpoint_file(folder):
    (path,) = folder.glob("sktransfer-finetune-*.pt")  # one fit, one file
    return path


def test_killed_fine_tune_resumes_from_last_checkpoint(data, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    ckpt = tmp_path / "ckpt"
    code = _KILLED_RUN.format(tests=str(Path(__file__).parent), ckpt=str(ckpt))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SKTRANSFER_TEST_KILL_EPOCH": "3"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 17, proc.stderr[-2000:]
    saved = torch.load(_checkpoint_file(ckpt), weights_only=True)
    assert len(saved["history"]) == 2 and not saved["finished"]  # epochs 1-2 done, 3 lost
    X, y = data
    kw = dict(max_epochs=5, unfreeze=1, precision="fp32", checkpoint_dir=str(ckpt),
              callbacks=[KillDuringEpoch()])
    clf = _clf(**kw).fit(X, y)
    h = clf.history_
    assert len(h) == 5
    assert h[:2, "train_loss"] == [e["train_loss"] for e in saved["history"]]
    uninterrupted = _clf(**{**kw, "checkpoint_dir": None}).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), uninterrupted.predict_proba(X), **FP32_TOLERANCE)
    # a finished run resumes as done: no more training
    again = _clf(**kw).fit(X, y)
    assert len(again.history_) == 5
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), atol=1e-6)


class _NaNFromSecondEpoch(nn.Module):
    """A head whose output turns NaN after 3 training batches (= epoch 2 with 24 images)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1280, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += int(self.training)
        out = self.fc(x)
        return out * float("nan") if self.calls > 3 else out


def test_nan_loss_keeps_last_good_checkpoint(data, tmp_path):
    X, y = data
    with pytest.raises(TrainingDivergedError, match="epoch 2"):
        _clf(head=_NaNFromSecondEpoch(), max_epochs=3, checkpoint_dir=str(tmp_path)).fit(X, y)
    saved = torch.load(_checkpoint_file(tmp_path), weights_only=True)
    assert len(saved["history"]) == 1 and not saved["finished"]
    assert all(torch.isfinite(v).all() for v in saved["module"].values() if v.is_floating_point())
