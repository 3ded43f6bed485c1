"""StagedNet: the one staged network of extraction, fine-tuning, the cache and Grad-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tolerances import FP32_TOLERANCE  # noqa: E402
from torch import nn

from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier
from sktransfer._backbone import Backbone, StagedNet


def _backbone(seed=0):
    torch.manual_seed(seed)
    stages = [
        ("conv", nn.Conv2d(3, 6, 3)),
        ("bn", nn.BatchNorm2d(6)),
        ("act", nn.ReLU()),
        ("conv2", nn.Conv2d(6, 4, 3)),
    ]
    return Backbone(stages, DataConfig(input_size=12, resize_size=None), name="tiny")


def test_frozen_bottom_runs_without_grad_and_stays_in_eval():
    bb = _backbone()
    net = StagedNet(bb, pooling="avg", head=nn.Linear(4, 2), n_frozen=2).train()
    assert not bb.stages[1].training and bb.stages[3].training
    assert [p.requires_grad for p in bb.stages[0].parameters()] == [False, False]
    x = torch.randn(3, 3, 12, 12)
    net(x).sum().backward()
    assert bb.stages[0].weight.grad is None and bb.stages[3].weight.grad is not None
    stats = bb.stages[1].running_mean.clone()
    net(x)
    assert torch.equal(stats, bb.stages[1].running_mean)  # BatchNorm statistics untouched


def test_from_stage_is_a_view_sharing_parameters():
    bb = _backbone()
    net = StagedNet(bb, pooling="avg", head=nn.Linear(4, 2), n_frozen=2).eval()
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        acts = bb(x, 0, 2)
        view = net.from_stage(2)
        torch.testing.assert_close(view(acts), net(x), **FP32_TOLERANCE)
        torch.testing.assert_close(net(acts, start=2), net(x), **FP32_TOLERANCE)
    assert net.start == 0 and view.start == 2  # the original is not changed
    assert dict(view.named_parameters()).keys() == dict(net.named_parameters()).keys()
    assert all(a is b for a, b in zip(view.parameters(), net.parameters()))
    with torch.no_grad():
        bb.stages[3].bias.add_(1.0)  # one set of weights: the view sees the change
        torch.testing.assert_close(view(acts), net(x), **FP32_TOLERANCE)
    assert [n for n, _ in net.named_parameters()][0].startswith("backbone.stages.0.")


def test_outputs_give_every_cut():
    bb = _backbone().eval()
    x = torch.randn(2, 3, 12, 12)
    cuts = StagedNet(bb, outputs=[1, 3, 4], pooling="avg")
    with torch.no_grad():
        parts = cuts.split_outputs(cuts(x))
        want = [bb(x, 0, 1), bb(x, 0, 3), bb(x).mean(dim=(2, 3))]  # the last cut is pooled
        from_one = StagedNet(bb, 1, outputs=[3])
        (part,) = from_one.split_outputs(from_one(bb(x, 0, 1)))
    for got, ref in zip(parts, want):
        torch.testing.assert_close(got, ref, **FP32_TOLERANCE)
    torch.testing.assert_close(part, want[1], **FP32_TOLERANCE)
    # numpy rows split the same way (run_inference returns arrays)
    assert [a.shape for a in cuts.split_outputs(cuts(x).detach().numpy())] == [
        (2, 6, 10, 10), (2, 6, 10, 10), (2, 4),
    ]  # fmt: skip


def test_keep_grad_reaches_frozen_stages_without_touching_requires_grad():
    bb = _backbone()
    bb.requires_grad_(False)
    net = StagedNet(bb, pooling="avg", keep_grad=True).eval()
    assert all(not p.requires_grad for p in bb.parameters())  # a view freezes nothing
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    frozen = StagedNet(bb, pooling="avg", n_frozen=4)
    x.grad = None
    assert not frozen(x).requires_grad  # without keep_grad, frozen stages run under no_grad


@pytest.fixture(scope="module")
def cached_fit():
    rng = np.random.default_rng(0)
    X = rng.random((12, 16, 16, 3)).astype(np.float32)
    y = np.array([0, 1] * 6)
    spec = BackboneSpec(
        module=nn.Sequential(*_backbone().stages), data_config=DataConfig(input_size=12, resize_size=None)
    )
    clf = FineTuneClassifier(
        spec, pretrained=False, unfreeze=1, max_epochs=2, batch_size=4, validation_split=None,
        verbose=0, random_state=0, precision="fp32", memory=None,
    ).fit(X, y)  # fmt: skip
    return clf, X


def test_finetune_net_takes_inputs_at_its_cut_and_predict_does_not_toggle_it(cached_fit):
    clf, X = cached_fit
    module = clf.net_.module_
    assert clf.input_stage_ == module.start == module.input_stage == 3
    proba = clf.predict_proba(X)
    assert module.start == 3  # prediction runs a view from the images, not a toggled module
    with pytest.raises(AttributeError):
        module.input_stage = 0  # read-only: the start stage is fixed at construction
    images = torch.stack([clf.transform_(torch.from_numpy(im).permute(2, 0, 1)) for im in X])
    with torch.no_grad():
        logits = module.from_stage(0).eval()(images)
        acts = clf.backbone_.eval()(images, 0, 3)
        from_acts = module.eval()(acts)
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), proba, **FP32_TOLERANCE)
    np.testing.assert_allclose(from_acts.numpy(), logits.numpy(), **FP32_TOLERANCE)
