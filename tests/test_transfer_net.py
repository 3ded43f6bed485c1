"""The skorch net of the fine-tuning estimators (sktransfer._transfer_net): which
batches it trains on and which parameters its optimizer holds.

The real bundled Lite0 at 32 px: its top stages then see 1x1 feature maps, where a
BatchNorm layer in training mode cannot normalise a batch of one image.
"""

from __future__ import annotations

import pytest
from skorch.callbacks import Callback
from test_finetune import SMALL, TINY_VIT, _clf, _images

from sktransfer import BackboneSpec, DataConfig

TINY_MAPS = BackboneSpec(
    arch="efficientnet_lite0",
    data_config=DataConfig(
        input_size=32, resize_size=None, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3
    ),
)


@pytest.fixture(scope="module")
def data():
    return _images()


class _CountBatches(Callback):
    """Records the size of every training batch."""

    def initialize(self):
        self.sizes = []
        return self

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if training:
            self.sizes.append(len(batch[1]))


@pytest.mark.parametrize("cache_frozen", [True, False])
def test_last_batch_of_one_image_trains_with_batchnorm_on_1x1_maps(cache_frozen):
    X, y = _images(10)
    X, y = X[:9], y[:9]  # batches of 8 and 1
    counter = _CountBatches()
    clf = _clf(
        backbone=TINY_MAPS, unfreeze=1, batch_size=8, max_epochs=2,
        cache_frozen=cache_frozen, callbacks=[("count", counter)],
    ).fit(X, y)  # fmt: skip
    assert counter.sizes == [8, 8]  # the lone last image is dropped, in every epoch
    assert clf.predict(X).shape == (9,)


def test_only_a_lone_last_batch_is_dropped():
    X, y = _images(12)
    X, y = X[:10], y[:10]  # batches of 8 and 2: nothing dropped
    counter = _CountBatches()
    _clf(backbone=TINY_MAPS, unfreeze=1, batch_size=8, max_epochs=1,
         callbacks=[("count", counter)]).fit(X, y)  # fmt: skip
    assert counter.sizes == [8, 2]
    # head only: no BatchNorm trains, so a batch of one is kept
    counter = _CountBatches()
    _clf(backbone=TINY_MAPS, unfreeze=0, batch_size=8, max_epochs=1,
         callbacks=[("count", counter)]).fit(X[:9], y[:9])  # fmt: skip
    assert counter.sizes == [8, 1]


def test_explicit_drop_last_is_used_as_given():
    X, y = _images(12)
    counter = _CountBatches()
    _clf(backbone=TINY_MAPS, unfreeze=1, batch_size=8, max_epochs=1,
         iterator_train__drop_last=True, callbacks=[("count", counter)]).fit(X[:10], y[:10])  # fmt: skip
    assert counter.sizes == [8]


@pytest.mark.parametrize(
    ("backbone", "unfreeze", "warmup_epochs"),
    [("lite0", 0, 0), ("lite0", 2, 0), ("lite0", "all", 0), ("lite0", 1, 1), ("vit", 3, 0)],
)
def test_optimizer_holds_only_parameters_the_forward_trains(
    data, backbone, unfreeze, warmup_epochs
):
    X, y = data
    # the ViT with layer decay: one optimizer group per unfrozen stage
    kw = {**TINY_VIT, "layer_decay": 0.5} if backbone == "vit" else {"backbone": SMALL}
    kw.update(unfreeze=unfreeze, warmup_epochs=warmup_epochs, max_epochs=2)
    clf = _clf(**kw).fit(X, y)
    net = clf.net_.module_
    assert net.backbone.classifier is not None  # the backbone has a pretrained classifier
    in_optimizer = {id(p) for g in clf.net_.optimizer_.param_groups for p in g["params"]}
    n = len(net.backbone.stages)
    n_train = n if unfreeze == "all" else unfreeze
    expected = {id(p) for p in net.head.parameters()}
    expected |= {id(p) for st in net.backbone.stages[n - n_train :] for p in st.parameters()}
    assert in_optimizer == expected
    assert not any(id(p) in in_optimizer for p in net.backbone.classifier.parameters())
    assert not any(p.requires_grad for p in net.backbone.classifier.parameters())
    # every parameter in the optimizer gets a gradient from the loss
    net.zero_grad(set_to_none=True)
    clf.net_.module_.from_stage(0).train()(_as_batch(clf, X[:4])).sum().backward()
    named = dict(net.named_parameters())
    no_grad = [k for k, p in named.items() if id(p) in in_optimizer and p.grad is None]
    assert not no_grad
    net.eval()


def _as_batch(clf, X):
    import torch
    from PIL import Image

    return torch.stack([clf.transform_(Image.fromarray(x)) for x in X])
