"""The trainable network of the fine-tuning estimators: backbone stages, pooling and
a head (:class:`TransferNet`), the head builder, and the skorch net that trains it
(only trainable parameters in the optimizer, discriminative learning rates, AMP)."""

from __future__ import annotations

import copy
from numbers import Integral

import numpy as np
import torch
from skorch import NeuralNet, NeuralNetClassifier
from skorch.dataset import unpack_data
from skorch.utils import TeeGenerator
from torch import nn

from . import _runtime
from ._backbone import Backbone, StagedNet
from .exceptions import InputError

__all__ = [
    "MultiLabelLoss",
    "SkorchTransferNet",
    "SkorchTransferNetRegressor",
    "TransferNet",
    "build_head",
]


class TransferNet(StagedNet):
    """Backbone stages + pooling + head, with the bottom ``n_frozen`` stages frozen:
    the :class:`~sktransfer._backbone.StagedNet` that the fine-tuning estimators train.

    Frozen stages have ``requires_grad=False``, run under ``no_grad`` and stay
    in eval mode even when the network is put in train mode, so their
    BatchNorm running statistics never change. ``start`` says where the
    inputs enter: 0 for images, ``k`` for activations cached after stage
    ``k - 1`` (``len(stages)`` for pooled features); :meth:`from_stage` gives
    the same network (shared parameters) entered elsewhere.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sktransfer.backbones import Backbone, DataConfig
    >>> from sktransfer.finetune import TransferNet
    >>> backbone = Backbone(
    ...     [("conv", nn.Conv2d(3, 8, 3)), ("bn", nn.BatchNorm2d(8))], DataConfig(), name="tiny"
    ... )
    >>> net = TransferNet(backbone, nn.Linear(8, 2), n_frozen=1).train()
    >>> net(torch.zeros(4, 3, 16, 16)).shape
    torch.Size([4, 2])
    >>> net.backbone.stages[0].training, net.backbone.stages[1].training
    (False, True)
    >>> [p.requires_grad for p in net.backbone.stages[0].parameters()]
    [False, False]
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        pooling: str = "avg",
        n_frozen: int = 0,
        start: int = 0,
    ):
        super().__init__(backbone, start, pooling=pooling, head=head, n_frozen=n_frozen)


def build_head(head, in_features: int, n_classes: int, dropout: float = 0.0) -> nn.Module:
    """Build the head: ``in_features`` pooled features to ``n_classes`` outputs (class
    logits, label logits, or regression targets).

    Parameters
    ----------
    head : None, int, sequence of int, str, nn.Module or callable
        ``None``: a linear layer. Hidden sizes (``512``, ``(1024, 512)`` or
        ``"1024-512"``): an MLP with ReLU and ``dropout`` after each hidden
        layer. An ``nn.Module`` is used as given (copied); a callable is called
        as ``head(in_features, n_classes)``.
    in_features, n_classes : int
    dropout : float

    Examples
    --------
    >>> build_head("64-32", 128, 3, dropout=0.5)
    Sequential(
      (0): Dropout(p=0.5, inplace=False)
      (1): Linear(in_features=128, out_features=64, bias=True)
      (2): ReLU()
      (3): Dropout(p=0.5, inplace=False)
      (4): Linear(in_features=64, out_features=32, bias=True)
      (5): ReLU()
      (6): Dropout(p=0.5, inplace=False)
      (7): Linear(in_features=32, out_features=3, bias=True)
    )
    """
    if isinstance(head, nn.Module):
        module = copy.deepcopy(head)
    elif callable(head) and not isinstance(head, (str, int)):
        module = head(in_features, n_classes)
    else:
        if head is None:
            hidden: list[int] = []
        elif isinstance(head, str):
            try:
                hidden = [int(h) for h in head.replace(",", "-").split("-") if h.strip()]
            except ValueError as exc:
                raise InputError(f"head={head!r}: expected hidden sizes like '1024-512'.") from exc
        elif isinstance(head, Integral):
            hidden = [int(head)]
        else:
            hidden = [int(h) for h in head]
        if any(h < 1 for h in hidden):
            raise InputError(f"head hidden sizes must be >= 1, got {hidden}.")
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            if dropout:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(prev, n_classes))
        module = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
    with torch.no_grad():
        out = module.eval()(torch.zeros(2, in_features))
    if out.ndim != 2 or out.shape[1] != n_classes:
        raise InputError(
            f"The head must map (n, {in_features}) features to (n, {n_classes}) logits; "
            f"it gives {tuple(out.shape)}."
        )
    return module


class MultiLabelLoss(nn.BCEWithLogitsLoss):
    """Binary cross-entropy on one logit per label, with label smoothing: each 0/1
    target becomes ``label_smoothing / 2`` / ``1 - label_smoothing / 2`` (the
    two-class case of cross-entropy's label smoothing). ``pos_weight`` weighs each
    label's positives, as in ``torch.nn.BCEWithLogitsLoss``.

    Examples
    --------
    >>> import torch
    >>> z, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    >>> smooth = torch.tensor([[0.95, 0.05]])
    >>> ref = torch.nn.functional.binary_cross_entropy_with_logits(z, smooth)
    >>> bool(torch.isclose(MultiLabelLoss(label_smoothing=0.1)(z, y), ref))
    True
    """

    def __init__(self, label_smoothing: float = 0.0, pos_weight=None):
        super().__init__(pos_weight=pos_weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, input, target):
        target = target.to(input.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        return super().forward(input, target)


def _trains_batchnorm(module: StagedNet) -> bool:
    """Whether ``module`` in training mode has a BatchNorm layer that normalises with
    the statistics of the batch: one outside its frozen stages (those stay in eval
    mode)."""
    frozen = {id(m) for stage in module.backbone.stages[: module.n_frozen] for m in stage.modules()}
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in frozen
        for m in module.modules()
    )


class _LabeledDataset(torch.utils.data.Dataset):
    """``(x, y)`` pairs; ``.X``/``.y`` let skorch's scoring read the targets.

    Its batches are collated as those of ``X`` (texts are tokenized per batch), by
    :class:`sktransfer._runtime.BatchLoader`, skorch's iterator."""

    def __init__(self, X, y: np.ndarray):
        self.X = X
        self.y = y

    def __len__(self):
        return len(self.y)

    @property
    def collate(self):
        return getattr(self.X, "collate", None)  # None: tensors are stacked

    def __getitem__(self, i):
        x = self.X[i]
        if isinstance(x, tuple):
            x = x[0]
        return x, self.y[i]


class _TransferTraining:
    """What both skorch nets of the fine-tuning estimators add to skorch: an optimizer that
    holds only trainable parameters, discriminative learning rates, autocast (AMP).

    Trainable: the unfrozen stages and the head, the parameters the forward uses;
    never the backbone's pretrained classifier.

    The head trains at ``lr`` and the top trainable backbone stage at ``lr *
    backbone_lr_scale``; each stage below it at ``layer_decay`` times the rate
    of the stage above (layer-wise learning-rate decay). With
    ``layer_decay=1`` the backbone is one group at ``lr * backbone_lr_scale``.
    skorch's ``optimizer__param_groups=[(pattern, options), ...]`` applies on top:
    the parameters whose names match a pattern form their own group, with the
    rate of the group they come from unless ``options`` sets one.

    With ``amp_dtype="fp16"`` the loss is scaled (``torch.amp.GradScaler``, in
    ``grad_scaler_``) so that fp16 gradients do not underflow; the gradients are
    unscaled before callbacks see them (``on_grad_computed``, e.g. gradient
    clipping) and a step whose gradients overflowed is skipped. bf16 and fp32 need
    no scaler.

    While the trainable part of the network has BatchNorm layers in training mode,
    a last training batch of a single sample is dropped, as ``drop_last=True``
    would (BatchNorm cannot normalise one value per channel, e.g. on 1x1 maps);
    no other batch is ever dropped, and an explicit ``iterator_train__drop_last``
    or ``iterator_train__batch_sampler`` is used as given.
    """

    def __init__(self, *args, backbone_lr_scale=0.1, layer_decay=1.0, amp_dtype="fp32", **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_lr_scale = backbone_lr_scale
        self.layer_decay = layer_decay
        self.amp_dtype = amp_dtype

    def get_iterator(self, dataset, training=False):
        if not training:
            return super().get_iterator(dataset, training)
        kwargs = self.get_params_for("iterator_train")
        batch_size = kwargs.get("batch_size", self.batch_size)
        n = len(dataset)
        lone_last = 1 < n and batch_size not in (-1, None) and n % batch_size == 1
        chosen = "drop_last" in kwargs or "batch_sampler" in kwargs
        if lone_last and not chosen and _trains_batchnorm(self.module_):
            kwargs.setdefault("batch_size", batch_size)
            return self.iterator_train(dataset, drop_last=True, **kwargs)
        return super().get_iterator(dataset, training)

    def get_all_learnable_params(self):
        for name, param in super().get_all_learnable_params():
            # the backbone's parameters outside its stages (the pretrained classifier)
            # never reach the loss: they are no part of the optimizer
            used = not name.startswith("backbone.") or name.startswith("backbone.stages.")
            if param.requires_grad and used:
                yield name, param

    def _param_groups(self) -> list[dict]:
        named = list(self.get_all_learnable_params())
        head = [p for n, p in named if not n.startswith("backbone.")]
        body = [(n, p) for n, p in named if n.startswith("backbone.")]
        groups = [{"params": head, "lr": self.lr}]
        top_lr = self.lr * self.backbone_lr_scale
        decay = getattr(self, "layer_decay", 1.0)  # nets pickled before layer_decay existed
        if decay == 1.0:
            if body:
                groups.append({"params": [p for _, p in body], "lr": top_lr})
            return groups
        n_stages = len(self.module_.backbone.stages)
        by_depth: dict[int, list] = {}
        for name, param in body:
            stage = int(name.split(".")[2])  # backbone.stages.<i>.*
            by_depth.setdefault(n_stages - 1 - stage, []).append(param)
        for depth in sorted(by_depth):
            groups.append({"params": by_depth[depth], "lr": top_lr * decay**depth})
        return groups

    def initialize_optimizer(self, *args, **kwargs):
        names = {id(p): n for n, p in self.get_all_learnable_params()}
        groups = []
        for base in self._param_groups():
            named = [(names[id(p)], p) for p in base.pop("params")]
            # skorch's own pattern matching, within each of our groups
            (split,), options = self.get_params_for_optimizer("optimizer", named)
            groups += [{**base, **group} for group in split]
        options.pop("lr", None)
        self.optimizer_ = self.optimizer(groups, lr=self.lr, **options)
        return self

    def initialize(self):
        super().initialize()
        fp16 = getattr(self, "amp_dtype", "fp32") == "fp16"
        self.grad_scaler_ = torch.amp.GradScaler(torch.device(self.device).type) if fp16 else None
        return self

    def train_step_single(self, batch, **fit_params):
        scaler = getattr(self, "grad_scaler_", None)
        if scaler is None:
            return super().train_step_single(batch, **fit_params)
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        scaler.scale(loss).backward()
        return {"loss": loss, "y_pred": y_pred}

    def train_step(self, batch, **fit_params):
        scaler = getattr(self, "grad_scaler_", None)
        if scaler is None:
            return super().train_step(batch, **fit_params)
        # skorch's step without the optimizer closure (a scaled step takes none)
        self._zero_grad_optimizer()
        step = self.train_step_single(batch, **fit_params)
        scaler.unscale_(self.optimizer_)
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(self.get_all_learnable_params()),
            batch=batch,
            training=True,
        )
        scaler.step(self.optimizer_)
        scaler.update()
        return step

    def infer(self, x, **fit_params):
        # skorch would unpack a dict batch (tokenized text) into keyword arguments
        device = torch.device(self.device)
        x = _runtime.to_device(x, device)
        with _runtime.autocast(device, _runtime.PRECISION_DTYPES[self.amp_dtype]):
            out = self.module_(x, **fit_params)
        return out.float()


class SkorchTransferNet(_TransferTraining, NeuralNetClassifier):
    """The skorch net of :class:`~sktransfer.FineTuneClassifier` on single-label targets
    (cross-entropy, skorch's ``valid_acc``); see :class:`_TransferTraining`."""


class SkorchTransferNetRegressor(_TransferTraining, NeuralNet):
    """The skorch net for float targets: :class:`~sktransfer.FineTuneRegressor` and
    multi-label :class:`~sktransfer.FineTuneClassifier` (losses only, no accuracy)."""
