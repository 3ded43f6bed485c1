"""FineTuneClassifier and FineTuneRegressor: partial and full fine-tuning as
scikit-learn estimators.

Both share one front (:class:`_FineTuneEstimator`: parameters, ``fit``, the staged
network, the prediction path); each says only what its targets are: single- or
multi-label classes, or continuous values.

Training runs on skorch (history, callbacks, ``optimizer__``/``iterator_train__``
prefixed parameters, ``Checkpoint``); freezing, two-phase training, early
stopping and divergence checks are skorch callbacks configured by plain
parameters. Input loading, preprocessing, batching and device handling are
the same as :class:`~sktransfer.PretrainedFeatureExtractor`'s
(:mod:`sktransfer.io`, :mod:`sktransfer._runtime`).

When the bottom of the network is frozen and augmentation is off, the frozen
stages are computed once per image and only the trainable top runs in each
epoch; frozen stages are in eval mode, so this gives the same model as
running the whole network every epoch.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, column_or_1d
from skorch.callbacks import EarlyStopping, LRScheduler
from skorch.helper import predefined_split
from torch import nn

from . import _runtime
from ._auto_depth import fit_auto_depth
from ._backbone import StagedNet
from ._callbacks import EpochCheckpoint, StopOnNonFinite, WarmupUnfreeze
from ._checkpoint import FitCheckpoint, attach_checkpoint, fit_identity
from ._lr_schedule import LR_SCHEDULES, PhasedLRScheduler
from ._modality import as_source, get_modality, make_transform
from ._transfer_net import (
    MultiLabelLoss,
    SkorchTransferNet,
    SkorchTransferNetRegressor,
    TransferNet,
    _LabeledDataset,
    build_head,
)
from ._validation import (
    HasMethods,
    Interval,
    StrOptions,
    check_fitted,
    check_input,
    check_prefixed_params,
    is_fitted_name,
    random_split,
    stratified_split,
    validate_params,
)
from .augment import make_augment
from .backbones import Backbone, Pooling, load_backbone
from .cache import FeatureMemory, cached_prefix_inference, module_fingerprints, resolve_memory
from .exceptions import DeviceWarning, InputError, ItemLoadError
from .io import make_dataset
from .tta import TTA_MODES, TTANet

__all__ = ["FineTuneClassifier", "FineTuneRegressor", "TransferNet", "build_head"]

# With memory=, a fit also stores the activations at the cuts of this many shallower
# freeze depths (the next ones a search over `unfreeze` tries), so that the frozen
# bottom of the network runs once per image for the whole search.
_EXTRA_CUTS = 2

_SKORCH_PREFIXES = (
    "optimizer__",
    "iterator_train__",
    "iterator_valid__",
    "callbacks__",
    "criterion__",
)
_REGRESSION_LOSSES = {
    "squared_error": nn.MSELoss,
    "absolute_error": nn.L1Loss,
    "huber": nn.HuberLoss,
}


# --------------------------------------------------------------------------- estimator


class _FineTuneEstimator(BaseEstimator):
    """The shared front of :class:`FineTuneClassifier` and :class:`FineTuneRegressor`:
    parameters, ``fit``, the staged network, checkpoints, the cache and the prediction
    path. A subclass says what its targets are, through these methods:

    - ``_encode_targets(y, n_items, continue_training, classes, what)``: ``y`` checked
      and encoded for the network (on the first fit, it also sets the target's fitted
      attributes: ``classes_``, or the regressor's scaling);
    - ``_split(y_enc, fraction, seed, option, remedy)``: the validation split;
    - ``_n_outputs()``, ``_skorch_net(y_enc)`` (the skorch class, criterion and its
      parameters), ``_target_labels()`` (what a checkpoint must match),
      ``_tta_average()`` (how test-time views are averaged).
    """

    _parameter_constraints = {
        "backbone": "no_validation",
        "pretrained": ["boolean"],
        "unfreeze": [Interval(Integral, 0, None, closed="left"), StrOptions({"all", "auto"})],
        "head": "no_validation",
        "head_dropout": [Interval(Real, 0, 1, closed="left")],
        "head_init": [StrOptions({"probe", "random"})],
        "pooling": [StrOptions({"auto", "avg", "mean", "max", "token", "cls", "cls+mean", "last"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
        "layer_decay": [Interval(Real, 0, 1, closed="right")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "optimizer": [StrOptions({"adamw", "adam", "sgd"}), type],
        "warmup_epochs": [Interval(Integral, 0, None, closed="left")],
        "lr_schedule": [StrOptions(set(LR_SCHEDULES))],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "augment": [None, StrOptions({"light", "strong", "none"}), callable],
        "validation_split": [None, Interval(Real, 0, 1, closed="neither"), tuple],
        "early_stopping": ["boolean", Interval(Integral, 1, None, closed="left")],
        "callbacks": [None, list],
        "random_state": ["random_state"],
        "device": [str, torch.device],
        "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
        "num_workers": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "cache_frozen": ["boolean"],
        "memory": [None, str, os.PathLike, HasMethods(["cache"]), FeatureMemory],
        "checkpoint_dir": [None, str, os.PathLike],
        "tta": [StrOptions(set(TTA_MODES))],
        "verbose": ["verbose"],
    }

    # ------------------------------------------------------------------ params

    def get_params(self, deep=True):
        """Parameters of this estimator, the skorch-prefixed ones included."""
        params = super().get_params(deep=deep)
        params.update(self._skorch_kwargs)
        return params

    def set_params(self, **params):
        """Set parameters: this estimator's, and skorch-prefixed ones
        (``optimizer__momentum=0.9``). Any other name raises ``ValueError``, as in
        scikit-learn; values are checked by ``fit``.

        Examples
        --------
        >>> clf = FineTuneClassifier().set_params(unfreeze=2, optimizer__momentum=0.9)
        >>> clf.get_params()["optimizer__momentum"], clf.unfreeze
        (0.9, 2)
        >>> clf.set_params(momentum=0.9)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Invalid parameter 'momentum' for estimator FineTuneClassifier(...). ...
        """
        extra = {
            k: v
            for k, v in params.items()
            if k.startswith(_SKORCH_PREFIXES) or k in self._skorch_kwargs
        }
        rest = {k: v for k, v in params.items() if k not in extra}
        if rest:
            super().set_params(**rest)  # ValueError for unknown names
        self._skorch_kwargs.update(extra)
        return self

    # ------------------------------------------------------------------ fit

    def fit(self, X, y):
        """Train on ``X`` (images or texts, anything the extractor accepts) with targets ``y``.

        The fit runs on an unfitted copy of the estimator whose fitted attributes
        replace this one's only when it succeeds.

        Returns
        -------
        self
        """
        return self._fit_new(X, y)

    def partial_fit(self, X, y, classes=None):
        """Continue training for ``max_epochs`` more epochs (fits first if needed).

        ``classes`` (classifiers) lists every label when the first call does not see them
        all.
        An error during the added epochs leaves the estimator unfitted (see Notes).
        """
        if not hasattr(self, "net_"):
            return self._fit_new(X, y, classes=classes)
        epochs_before = len(self.net_.history)
        try:
            with _item_errors(type(self).__name__, "fit"):
                return self._fit(X, y, continue_training=True)
        except BaseException:
            if len(self.net_.history) > epochs_before:  # training started: weights half-updated
                self._drop_fitted()
            raise

    def _fit_new(self, X, y, classes=None):
        staged = object.__new__(type(self))
        staged.__dict__.update((k, v) for k, v in vars(self).items() if not is_fitted_name(k))
        with _item_errors(type(self).__name__, "fit"):
            if isinstance(self.unfreeze, str) and self.unfreeze == "auto":
                validate_params(staged)
                fit_auto_depth(staged, X, y, classes)
            else:
                staged._fit(X, y, continue_training=False, classes=classes)
                staged.unfreeze_ = len(staged.backbone_.stage_names) - staged.n_frozen_
                staged.unfreeze_scores_ = {}
        self.__dict__.clear()
        self.__dict__.update(vars(staged))
        return self

    def _drop_fitted(self):
        for name in [k for k in vars(self) if is_fitted_name(k)]:
            delattr(self, name)

    def _fit(self, X, y, *, continue_training: bool, classes=None):
        validate_params(self)
        check_prefixed_params(self, self._skorch_kwargs, _SKORCH_PREFIXES)
        X = check_input(self, X, reset=not continue_training)
        device = self.device_ if continue_training else _runtime.resolve_device(self.device)
        amp = self._amp_dtype(device)
        workers = _runtime.resolve_num_workers(self.num_workers)
        seed = self._seed()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            # every input error is raised here, before any training starts
            backbone = self.backbone_ if continue_training else self._load_backbone()
            source = as_source(X, backbone.modality)
            y_enc = self._encode_targets(y, len(source), continue_training, classes)
            val = self._validation_plan(y_enc, backbone.modality, seed)
            if not continue_training:
                self.device_ = device
                self._build(backbone, amp, y_enc)
            checkpoint = None
            if self.checkpoint_dir is not None and not continue_training:
                # only this very fit resumes: same parameters, data and seed (_checkpoint)
                checkpoint = self._checkpoint_path(source, y_enc, val, seed)
                if checkpoint.seed != seed:  # random_state=None: the seed the killed run drew
                    seed = checkpoint.seed
                    val = self._validation_plan(y_enc, backbone.modality, seed)
            train_ds, valid_ds = self._datasets(source, y_enc, val, seed, workers)
            net = self.net_
            if valid_ds is not None:
                net.set_params(train_split=predefined_split(valid_ds))
            else:
                net.set_params(train_split=None)
            epochs = None  # skorch's default: max_epochs
            if self.checkpoint_dir is not None:
                # partial_fit's later calls train on other data: they are not checkpointed
                epochs = attach_checkpoint(net, checkpoint, self._target_labels())
            # partial_fit: the net was initialized by _build; fit would re-initialize it
            # (the net takes its inputs at stage input_stage_, fixed when it was built)
            if epochs is None or epochs > 0:
                if not continue_training and self.head_init == "probe":
                    self._init_head_from_probe(train_ds, y_enc, val, workers)
                net.partial_fit(train_ds, None, epochs=epochs)
        return self

    def _checkpoint_path(self, source, y_enc, val, seed) -> FitCheckpoint:
        """The checkpoint of this fit in ``checkpoint_dir``, keyed by its identity."""
        reuse_seed = self.random_state is None
        identity = fit_identity(
            self.get_params(deep=False),
            source,
            y_enc,
            self._target_labels(),
            val,
            None if reuse_seed else seed,
        )
        return FitCheckpoint(
            self.checkpoint_dir, identity, seed, reuse_seed=reuse_seed, device=self.device_
        )

    def _validation_plan(self, y_enc, modality, seed):
        """None, ("split", train_idx, valid_idx) or ("given", X_val, y_val_enc); raises
        before training."""
        vs = self.validation_split
        if vs is None:
            return None
        if isinstance(vs, tuple):
            if len(vs) != 2:
                raise InputError("validation_split as a tuple must be (X_val, y_val).")
            X_val, y_val = vs
            src = as_source(X_val, modality)
            y_val = self._encode_targets(y_val, len(src), True, None, what="y_val")
            return ("given", src, y_val)
        train, valid = self._split(
            y_enc,
            vs,
            seed % (2**31 - 1),
            option=f"validation_split={vs}",
            remedy="Use a larger fraction, more data, or validation_split=None.",
        )
        return ("split", train, valid)

    def _amp_dtype(self, device):
        """The autocast precision name; "fp16" stays fp16 (with a gradient scaler)."""
        return _runtime.precision_name(
            _runtime.resolve_precision(self.precision, device, training=True)
        )

    def _seed(self) -> int:
        if isinstance(self.random_state, Integral):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _load_backbone(self) -> Backbone:
        with _runtime.quiet_loading(self.verbose):
            backbone = load_backbone(self.backbone, pretrained=self.pretrained, copy=True)
        return backbone.for_pooling(self.pooling)  # the last stage as this pooling needs it

    def _resolve_unfreeze(self, backbone: Backbone) -> int:
        n = len(backbone.stage_names)
        if self.unfreeze == "all":
            return 0
        if 0 <= self.unfreeze <= n:
            return n - int(self.unfreeze)
        raise InputError(  # "auto" never reaches here: fit_auto_depth fits int depths
            f"unfreeze={self.unfreeze!r} is out of range for backbone {backbone.name!r}, which has "
            f"{n} stages {backbone.stage_names}: use an int from 0 (head only) to {n}, or 'all'."
        )

    def _build(self, backbone, amp, y_enc):
        n_frozen = self._resolve_unfreeze(backbone)
        if self.warmup_epochs >= self.max_epochs and n_frozen < len(backbone.stages):
            raise InputError(
                f"warmup_epochs={self.warmup_epochs} must be smaller than max_epochs="
                f"{self.max_epochs}: warm-up epochs count in max_epochs."
            )
        modality = get_modality(backbone)
        width = backbone.pooled_width(self.pooling)  # declared by its builder: no probe
        if width is None:
            with torch.no_grad():
                probe = Pooling(self.pooling, backbone.num_prefix_tokens)(
                    backbone.eval()(modality.example_input(backbone))
                )
            width = int(probe.shape[1])
        head = build_head(self.head, width, self._n_outputs(), self.head_dropout)
        self.n_frozen_ = n_frozen
        if not modality.augmentable and self.augment not in (None, "none"):
            raise InputError(
                f"augment applies to images; use augment=None with a {modality.name} backbone."
            )
        self.transform_ = modality.transform(backbone)
        self.augment_ = (
            make_augment(self.augment, backbone.data_config) if modality.augmentable else None
        )
        # Reuse frozen activations when every epoch would recompute the same values
        # (for texts, whose token states vary in length, only pooled features).
        cacheable = self.cache_frozen and self.augment_ is None and n_frozen > 0
        cacheable = cacheable and (modality.caches_unpooled or n_frozen == len(backbone.stages))
        self.input_stage_ = n_frozen if cacheable else 0
        module = TransferNet(backbone, head, self.pooling, n_frozen, start=self.input_stage_)
        module = _runtime.prepare_module(module, self.device_)
        self.net_ = self._make_net(module, amp, y_enc)
        self.net_.initialize()
        # cache keys of the frozen prefix: computed here, never by predict
        with_memory = self.memory is not None and self.input_stage_ > 0
        self.prefix_keys_ = self._prefix_keys(_EXTRA_CUTS) if with_memory else None

    def _make_net(self, module, amp, y_enc):
        callbacks = [("stop_on_non_finite", StopOnNonFinite())]
        n_stages = len(module.backbone.stages)
        if self.warmup_epochs and module.n_frozen < n_stages:
            callbacks.append(
                ("warmup_unfreeze", WarmupUnfreeze(self.warmup_epochs, module.n_frozen))
            )
        if self.lr_schedule != "constant":
            own = [
                cb
                for cb in (c[1] if isinstance(c, tuple) else c for c in self.callbacks or [])
                if isinstance(cb, LRScheduler) or cb is LRScheduler
            ]
            if own:
                raise InputError(
                    f"callbacks has a learning-rate scheduler and lr_schedule="
                    f"{self.lr_schedule!r} would change the rates too: pass "
                    "lr_schedule='constant' to use your own."
                )
            warmup = self.warmup_epochs if module.n_frozen < n_stages else 0
            callbacks.append(
                (
                    "lr_scheduler",
                    PhasedLRScheduler(self.lr_schedule, warmup, self.max_epochs),
                )
            )
        if self.early_stopping:
            patience = 5 if self.early_stopping is True else int(self.early_stopping)
            monitor = "valid_loss" if self.validation_split is not None else "train_loss"
            callbacks.append(
                (
                    "early_stopping",
                    EarlyStopping(monitor=monitor, patience=patience, load_best=True),
                )
            )
        callbacks += list(self.callbacks or [])
        if self.checkpoint_dir is not None:
            # last: it saves what the others' on_epoch_end left (the best weights early
            # stopping restored, the LR scheduler's step) and restores what their
            # on_train_begin reset; _fit gives it its file (FitCheckpoint.attach)
            callbacks.append(("epoch_checkpoint", EpochCheckpoint()))
        optimizer = self.optimizer
        if isinstance(optimizer, str):
            optimizer = {
                "adamw": torch.optim.AdamW,
                "adam": torch.optim.Adam,
                "sgd": torch.optim.SGD,
            }[optimizer]
        net_class, criterion, net_kwargs = self._skorch_net(y_enc)
        # batches as inference's: collate and batching from the dataset (_runtime.BatchLoader)
        loader = {
            "device": self.device_,
            "num_workers": _runtime.resolve_num_workers(self.num_workers),
        }
        kwargs = {
            "optimizer__weight_decay": self.weight_decay,
            **{f"iterator_train__{k}": v for k, v in loader.items()},
            **{f"iterator_valid__{k}": v for k, v in loader.items()},
            **net_kwargs,
            **self._skorch_kwargs,
        }
        return net_class(
            module,
            criterion=criterion,
            optimizer=optimizer,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            iterator_train=_runtime.BatchLoader,
            iterator_valid=_runtime.BatchLoader,
            iterator_train__shuffle=True,
            callbacks=callbacks,
            device=str(self.device_),
            verbose=self.verbose,
            backbone_lr_scale=self.backbone_lr_scale,
            layer_decay=self.layer_decay,
            amp_dtype=amp,
            **kwargs,
        )

    def _datasets(self, source, y_enc, val, seed, workers):
        """Training and validation datasets: cached frozen activations or live images."""
        idx = np.arange(len(y_enc))
        if val is not None and val[0] == "split":
            idx, val_idx = val[1], val[2]
        if self.input_stage_ > 0:
            X_all = self._frozen_activations(source, workers)
            train = _LabeledDataset(X_all[idx], y_enc[idx])
            if val is None:
                return train, None
            if val[0] == "split":
                return train, _LabeledDataset(X_all[val_idx], y_enc[val_idx])
            return train, _LabeledDataset(self._frozen_activations(val[1], workers), val[2])
        train_tf = (
            self.transform_
            if self.augment_ is None
            else make_transform(self.backbone_, self.augment_)
        )
        train = _LabeledDataset(make_dataset(source.subset(idx), train_tf), y_enc[idx])
        if val is None:
            return train, None
        if val[0] == "split":
            valid_src, y_val = source.subset(val_idx), y_enc[val_idx]
        else:
            valid_src, y_val = val[1], val[2]
        return train, _LabeledDataset(make_dataset(valid_src, self.transform_), y_val)

    def _init_head_from_probe(self, train_ds, y_enc, val, workers) -> None:
        """Start the linear head at a linear model fitted on the training data's pooled
        features (linear probing, then fine-tuning: Kumar et al., ICLR 2022), so that
        training starts from the frozen-feature probe's solution."""
        module = self.net_.module_
        linear = _linear_layer(module.head)
        if linear is None:  # an MLP or a custom head starts from its own initialisation
            return
        items = train_ds.X
        if isinstance(items, torch.Tensor):
            items = _runtime.TensorItems(items)
        else:  # the plain transform: the probe sees the images, not augmented copies
            items = make_dataset(items.source, self.transform_)
        features = StagedNet(module.backbone, self.input_stage_, pooling=module.pool)
        F = _runtime.run_inference(
            features,
            items,
            num_workers=0 if isinstance(items, _runtime.TensorItems) else workers,
            desc="probe features",
            **self._inference_settings(),
        )
        module.train(module.training)
        weight, bias = self._probe_head(F.astype(np.float64), np.asarray(train_ds.y))
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
            linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))

    def _inference_settings(self) -> dict:
        """Batch size, device and precision of every forward pass outside training."""
        modality = get_modality(self.backbone_)
        return {
            "batch_size": _runtime.resolve_batch_size("auto", self.device_, modality),
            "device": self.device_,
            "dtype": _runtime.PRECISION_DTYPES[self.net_.amp_dtype],
        }

    def _frozen_prefix(self, cut: int) -> nn.Module:
        module = self.net_.module_
        pool = module.pool if cut == len(module.backbone.stages) else None
        return StagedNet(module.backbone.truncated(cut), pooling=pool)

    def _prefix_keys(self, extra_cuts: int) -> dict:
        """Cache keys of the frozen prefix and, for images, of the cuts of the next
        ``extra_cuts`` freeze depths."""
        k = self.input_stage_
        unpooled = get_modality(self.backbone_).caches_unpooled
        cuts = range(max(1, k - extra_cuts), k + 1) if unpooled else [k]
        return module_fingerprints(  # the stages the cuts share are hashed once
            {c: self._frozen_prefix(c) for c in cuts},
            data_config=self.transform_.data_config.to_dict(),
            precision=self.net_.amp_dtype,
            device=self.device_.type,
        )

    def _frozen_activations(self, source, workers, keys=None) -> torch.Tensor:
        """Outputs of the frozen stages (pooled when only the head trains), one per item,
        from ``memory`` when they are there. ``keys``: the cache keys of the cuts to
        look up and store (default: those of the fit, ``prefix_keys_``)."""
        module = self.net_.module_
        memory = resolve_memory(self.memory)
        run_kwargs = {
            **self._inference_settings(),
            "num_workers": workers,
            "verbose": self.verbose,
            "desc": "frozen features",
        }
        dataset = make_dataset(source, self.transform_)
        if memory is None:
            feats = _runtime.run_inference(
                self._frozen_prefix(self.input_stage_), dataset, **run_kwargs
            )
        else:
            feats = cached_prefix_inference(
                module.backbone,
                self.input_stage_,
                dataset,
                memory=memory,
                keys=self.prefix_keys_ if keys is None else keys,
                pool=module.pool,
                **run_kwargs,
            )
        module.train(module.training)
        return torch.from_numpy(feats)

    # ------------------------------------------------------------------ predict

    def _outputs(self, X) -> np.ndarray:
        """The network's outputs on ``X`` (logits, or standardized regression values)."""
        check_fitted(self, "net_")
        with _item_errors(type(self).__name__, "prediction"):
            return self._run_net(X)

    def _run_net(self, X) -> np.ndarray:
        X = check_input(self, X, reset=False)
        source = as_source(X, self.backbone_.modality)
        modality = get_modality(self.backbone_)
        run = {**self._inference_settings(), "desc": "predict"}
        net = self.net_.module_.from_stage(0)
        if self.tta != "none":
            if not modality.spatial:
                raise InputError(
                    f"tta={self.tta!r} needs an image backbone; {self.backbone_.name!r} is a "
                    f"{self.backbone_.modality} backbone. Use tta='none'."
                )
            net = TTANet(net, self.tta, self._tta_average())  # outputs of the averaged views
        elif self.memory is not None and self.input_stage_ > 0:
            # frozen part from the cache, trainable top on it: same result, far less compute.
            # Only the cut this model starts from: the extra cuts a fit stores are for fits.
            cut = self.input_stage_
            keys = self.prefix_keys_ or self._prefix_keys(0)  # memory= set after the fit
            acts = self._frozen_activations(
                source, _runtime.resolve_num_workers(self.num_workers), {cut: keys[cut]}
            )
            # the fitted net takes its inputs at stage input_stage_
            return _runtime.run_inference(
                self.net_.module_, _runtime.TensorItems(acts), num_workers=0, **run
            )
        return _runtime.run_inference(
            net,
            make_dataset(source, self.transform_),
            num_workers=_runtime.resolve_num_workers(self.num_workers),
            verbose=0,
            **run,
        )

    # ------------------------------------------------------------------ fitted views

    @property
    def history_(self):
        check_fitted(self, "net_")
        return self.net_.history

    @property
    def backbone_(self) -> Backbone:
        check_fitted(self, "net_")
        return self.net_.module_.backbone

    def plot_history(self, **kwargs):
        """Plot the per-epoch losses and validation accuracy; see
        :func:`sktransfer.plotting.plot_history` (keyword arguments go there).

        Examples
        --------
        >>> FineTuneClassifier().plot_history()
        Traceback (most recent call last):
        ...
        sktransfer.exceptions.NotFittedError: ...
        """
        from .plotting import plot_history

        check_fitted(self, "net_")
        return plot_history(self, **kwargs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.non_deterministic = self.random_state is None
        return tags

    def __setstate__(self, state):
        super().__setstate__(state)
        device = state.get("device_")
        if device is not None and device.type == "cuda" and not torch.cuda.is_available():
            warnings.warn(
                f"This {type(self).__name__} was fitted on CUDA, which is not available here; it now runs on "
                "the CPU.",
                DeviceWarning,
                stacklevel=2,
            )
            self.device_ = torch.device("cpu")
            self.net_.set_params(device="cpu")


class FineTuneClassifier(ClassifierMixin, _FineTuneEstimator):
    """Fine-tune a pretrained backbone with a new head, as a scikit-learn classifier.

    One parameter, ``unfreeze``, spans the classic recipes: ``0`` trains only
    the head on frozen features (feature extraction), ``k`` also trains the
    top ``k`` stages of the backbone (partial fine-tuning, at ``lr *
    backbone_lr_scale``), ``"all"`` trains everything (full fine-tuning).
    With ``warmup_epochs`` the head trains alone first (two-phase training).
    ``unfreeze`` is a plain hyper-parameter, so ``GridSearchCV`` can search it.

    ``y`` holds one label per item (binary or multiclass), or a 2-D 0/1 indicator
    matrix with one column per label (multi-label, as from
    ``sklearn.preprocessing.MultiLabelBinarizer``): the head then gives one logit per
    label, trained with a sigmoid and binary cross-entropy, ``predict`` returns the
    indicator matrix of the labels whose probability reaches ``threshold``, and
    ``predict_proba`` each label's probability. :class:`FineTuneRegressor` is the
    sibling for continuous targets.

    The defaults are the recipe that measured best within a CPU budget
    (``benchmarks/recipe_candidates.py``, ``docs/strategies.md``): the top one or
    two stages of the backbone, whichever does better on the validation hold-out
    (``unfreeze="auto"``), train with the head (at 0.1x the head's rate) for 6
    epochs under a one-cycle schedule, with label smoothing 0.1, and the chosen
    depth is refitted on all the data. The frozen stages run once per image for
    the whole fit.

    Parameters
    ----------
    backbone : str, path, nn.Module or BackboneSpec, default="efficientnet_lite0"
        As for :class:`~sktransfer.PretrainedFeatureExtractor`.
    pretrained : bool, default=True
        ``False`` starts from random weights (training from scratch, for comparison);
        a given module, spec or Backbone is re-initialised on a copy (see
        :func:`~sktransfer.backbones.load_backbone`).
    unfreeze : int, "all" or "auto", default="auto"
        How many of the backbone's top stages train (``backbone_.stage_names``
        lists them, bottom first): 0 = head only, ``len(stage_names)`` or
        ``"all"`` = everything. ``"auto"`` chooses the depth as scikit-learn's
        ``*CV`` estimators choose a strength: 1 and 2 each train on the training part
        of ``validation_split``, the one with the lower validation loss (the
        shallower on a tie) is refitted on all the data without a hold-out (given
        ``(X_val, y_val)`` stay its validation data), and
        ``unfreeze_`` / ``unfreeze_scores_`` say what was chosen and why. The trials
        and the refit read the frozen stages' activations from one cache
        (``memory``, or a temporary one), so the frozen bottom runs once per image.
        Without a hold-out (``validation_split=None``), or where activations are not
        cached (text backbones, ``augment``, ``cache_frozen=False``), ``"auto"``
        trains 1 stage without a search.
    head : None, int, sequence of int, str, nn.Module or callable, default=None
        Linear head by default; hidden sizes such as ``(1024, 512)`` or
        ``"1024-512"`` give an MLP; see :func:`build_head`.
    head_dropout : float, default=0.0
        Dropout before each layer of the head.
    head_init : {"random", "probe"}, default="random"
        How a linear head starts. ``"random"``: PyTorch's default initialisation.
        ``"probe"``: at a linear model fitted on the
        training part's pooled features, computed once by the network as it starts
        (scikit-learn's ``LogisticRegression`` with its defaults, one per label for
        multi-label targets, honouring ``class_weight``; ``Ridge(alpha=1)`` on the
        standardised targets for :class:`FineTuneRegressor`): fine-tuning then starts
        from the frozen-feature probe's solution ("linear probing, then fine-tuning",
        Kumar et al., ICLR 2022). MLP and custom heads always start from their own
        initialisation.
    pooling : {"auto", "avg", "mean", "max", "token", "cls", "cls+mean", "last"}, default="auto"
        As in :class:`~sktransfer.PretrainedFeatureExtractor`: ``"auto"`` is the
        model's own representation (pre-logits, a sentence-transformers pipeline,
        CLIP's projection), the head's input.
    lr : float, default=1e-3
        Learning rate of the head.
    backbone_lr_scale : float, default=0.1
        Unfrozen backbone stages train at ``lr * backbone_lr_scale`` (the top
        one, with ``layer_decay``).
    layer_decay : float in (0, 1], default=1.0
        Layer-wise learning-rate decay, as in BEiT and DINOv2 fine-tuning: the
        top unfrozen stage trains at ``lr * backbone_lr_scale``, the one below
        at ``lr * backbone_lr_scale * layer_decay``, the next at
        ``lr * backbone_lr_scale * layer_decay**2``, and so on down to the lowest
        unfrozen stage. ``1.0`` turns it off (every unfrozen stage at
        ``lr * backbone_lr_scale``). A plain hyper-parameter: ``GridSearchCV``
        can search it with ``unfreeze``.
    weight_decay : float, default=1e-4
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
    warmup_epochs : int, default=0
        Epochs (counted in ``max_epochs``) during which only the head trains.
    lr_schedule : {"constant", "cosine", "onecycle"}, default="onecycle"
        How every learning rate (head and backbone groups alike, so their
        ratios hold) changes, batch by batch, over the epochs after warm-up
        (over all epochs without warm-up); warm-up epochs train the head at a
        constant ``lr``. ``"cosine"`` decays from the base rates to 0 along a
        half cosine; ``"onecycle"`` rises from 1/25 of them over the first 25%
        of the batches, then decays to 0 (fastai's ``fit_one_cycle``). A skorch
        ``LRScheduler`` callback named ``"lr_scheduler"``; the head's rate of
        each batch is in ``history_[:, "batches", :, "event_lr"]``.
    label_smoothing : float in [0, 1), default=0.1
        Label smoothing of the cross-entropy loss
        (``torch.nn.CrossEntropyLoss(label_smoothing=...)``): the target puts
        ``1 - label_smoothing`` on the true class and spreads the rest evenly
        over all classes. With multi-label targets, each label's 0/1 target becomes
        ``label_smoothing / 2`` / ``1 - label_smoothing / 2``.
    threshold : float in [0, 1], default=0.5
        Multi-label targets only: ``predict`` marks a label present when its
        probability is at least ``threshold``. Only prediction changes:
        ``set_params(threshold=...)`` on a fitted model needs no refit.
    max_epochs : int, default=6
    batch_size : int, default=32
        While BatchNorm layers train (in the unfrozen stages), a last training batch
        of a single sample is dropped: BatchNorm cannot normalise it. No other batch
        is dropped.
    augment : None, "light", "strong" or callable, default=None
        Training-time augmentation (see :mod:`sktransfer.augment`).
        Augmentation turns off the frozen-feature reuse.
    validation_split : float, tuple (X_val, y_val) or None, default=0.2
        A stratified fraction of the training data held out for validation
        (early stopping, history), or explicit validation data. Multi-label targets
        are split at random (label sets are not stratified). With
        ``unfreeze="auto"`` the hold-out chooses the depth, and the chosen depth is
        then refitted on all the data (a fraction: its history has no validation
        scores; given data stay its validation data).
    early_stopping : int or False, default=5
        Patience in epochs on the validation loss (the training loss without
        validation); the best epoch's weights are restored at the end.
    class_weight : None, "balanced" or dict, default=None
        Weights of the classes in the loss (``"balanced"``: inversely proportional
        to their frequencies, as in scikit-learn). With multi-label targets only
        ``"balanced"`` applies: each label's positives are weighted by its
        negatives / positives (``BCEWithLogitsLoss(pos_weight=...)``).
    callbacks : list of skorch callbacks, optional
        Extra callbacks, e.g. ``skorch.callbacks.Checkpoint``.
    random_state : int or None, default=None
        Seeds weight init, shuffling, augmentation and the validation split:
        two CPU fits with the same seed give identical predictions.
    device : str, default="auto"
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        ``"auto"``: autocast (AMP) on CUDA (bf16 where the GPU has it, else fp16), fp32
        on the CPU. ``"fp16"`` is fp16 on every device, never silently bf16, and trains
        with a gradient scaler (``torch.amp.GradScaler``) so that small gradients do not
        underflow; on the CPU fp16 is mostly emulated and slower than fp32.
    num_workers : int or "auto", default="auto"
    cache_frozen : bool, default=True
        Compute the frozen stages once per image and train the top from those
        activations (exact: frozen stages run in eval mode). Off with
        augmentation, since augmented images differ every epoch.
    memory : None, str, joblib.Memory or FeatureMemory, default=None
        ``None`` reuses frozen activations within one ``fit`` only. A folder
        (or ``joblib.Memory``) keeps them on disk, keyed by the frozen
        weights, cut point, preprocessing and each image's content, so grid
        candidates, CV folds, later fits and other processes reuse them, and
        ``predict`` runs only the trainable top (see :mod:`sktransfer.cache`);
        ``predict`` computes and stores only the cut the fitted model starts from.
        For images a fit also stores the activations at the cuts of the two
        next shallower freeze depths (``unfreeze + 1`` and ``+ 2``), and a
        missing cut is computed on from a shallower one already stored, so a
        search over ``unfreeze`` runs the frozen bottom once per image (at
        most three cuts' worth of disk per image and fit).
    checkpoint_dir : str or None, default=None
        Save the training state after every epoch, atomically, to one file per
        fit, ``sktransfer-finetune-<key>.pt``. The key is a hash of the fit's
        identity: every parameter except ``verbose``, ``num_workers``,
        ``memory`` and ``checkpoint_dir`` (modules by their weights), the
        training data's content and labels (and a given validation set's), and
        the seed. A later ``fit`` with the same identity resumes from the file,
        so a killed run loses at most the epoch in progress and a finished one
        trains no further; any other fit starts fresh in its own file, so CV
        folds and grid-search candidates sharing a folder never load each
        other's weights. With ``random_state=None`` the key has no seed: a rerun
        on the same parameters and data resumes, with the seed the first run
        drew. Restored: the weights and warm-up phase, the optimizer state, the
        history, the torch random state, each skorch ``LRScheduler``'s schedule,
        early stopping's patience counter, best score and best weights, and the
        history's best scores, so the resumed run ends as the run never killed.
        ``partial_fit`` calls after the first are not checkpointed. A NaN loss
        stops training and leaves the last good epoch there.
    tta : {"none", "flip", "flip+crops"}, default="none"
        Test-time augmentation of ``predict``, ``predict_proba`` and
        ``decision_function``: the probabilities are averaged over the image and its
        horizontal mirror (``"flip"``, 2 forward passes), plus the four corner crops
        and the centre crop covering 87.5% of each side (``"flip+crops"``, 7 passes),
        taken on the preprocessed batch (see :mod:`sktransfer.tta`). With it on,
        ``decision_function`` gives the log of the averaged probabilities (with two
        classes, ``log p1 - log p0``; multi-label: each label's averaged probability
        is averaged, and its logit returned), and prediction runs the whole network on the images (not the cached frozen
        activations). Only prediction changes: ``set_params(tta=...)`` on a fitted
        model needs no refit. Image backbones only.
    verbose : int, default=1
        1 prints skorch's per-epoch table; 0 is quiet.
    **kwargs
        skorch parameters with the prefixes ``optimizer__``, ``iterator_train__``,
        ``iterator_valid__``, ``callbacks__`` and ``criterion__`` (checked by ``fit``).
        ``optimizer__param_groups=[("head.*", {"lr": 1e-2})]`` gives the parameters
        whose names match a pattern (``net_.module_.named_parameters()``) their own
        optimizer settings, on top of the head / backbone learning rates.

    Notes
    -----
    Fitted attributes are set only by a successful ``fit``: a ``fit`` that fails
    leaves the estimator as it was (unfitted, or with the previous fit's model).
    ``partial_fit`` on a fitted estimator trains ``net_`` in place: an error found
    before training (bad labels, unreadable files) changes nothing, an error during
    its epochs (a diverged loss) leaves the estimator unfitted, since its weights are
    then half-updated (with ``checkpoint_dir``, the last good epoch is on disk).
    Prediction never changes the estimator.

    Input files are read during ``fit`` and ``predict``; there is no ``on_error``
    option: every item must be readable, and an unreadable one raises
    :class:`~sktransfer.exceptions.ItemLoadError` naming it.

    Attributes
    ----------
    classes_ : ndarray
        The labels, in the order of ``predict_proba``'s columns; with multi-label
        targets, ``arange(n_labels)`` (the indicator matrix's columns), as scikit-learn's
        ``MLPClassifier`` has it.
    target_type_ : {"binary", "multiclass", "multilabel-indicator"}
        The kind of ``y`` (:func:`sklearn.utils.multiclass.type_of_target`'s names).
    net_ : skorch.NeuralNet
        The trained skorch net (a ``NeuralNetClassifier`` for single-label targets);
        ``net_.module_`` is the :class:`TransferNet`.
    history_ : skorch.History
        Per-epoch losses and accuracies.
    backbone_ : Backbone
        The backbone inside ``net_.module_``.
    n_frozen_ : int
        Number of frozen stages.
    unfreeze_ : int
        Number of trained stages: the depth ``unfreeze="auto"`` chose, or ``unfreeze``
        as an int (``"all"``: every stage).
    unfreeze_scores_ : dict
        ``{depth: best validation loss}`` of the trials of ``unfreeze="auto"``; empty
        when there was no search.
    device_ : torch.device
    n_features_in_ : int

    See Also
    --------
    FineTuneRegressor, sktransfer.PretrainedFeatureExtractor

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer import FineTuneClassifier
    >>> d = load_digits()
    >>> clf = FineTuneClassifier(max_epochs=2, validation_split=None, verbose=0,
    ...                          random_state=0).fit(d.images[:60], d.target[:60])
    >>> clf.predict(d.images[:3]).shape
    (3,)
    """

    _parameter_constraints = {
        **_FineTuneEstimator._parameter_constraints,
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "threshold": [Interval(Real, 0, 1, closed="both")],
        "class_weight": [None, StrOptions({"balanced"}), dict],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        pretrained=True,
        unfreeze="auto",
        head=None,
        head_dropout=0.0,
        head_init="random",
        pooling="auto",
        lr=1e-3,
        backbone_lr_scale=0.1,
        layer_decay=1.0,
        weight_decay=1e-4,
        optimizer="adamw",
        warmup_epochs=0,
        lr_schedule="onecycle",
        label_smoothing=0.1,
        threshold=0.5,
        max_epochs=6,
        batch_size=32,
        augment=None,
        validation_split=0.2,
        early_stopping=5,
        class_weight=None,
        callbacks=None,
        random_state=None,
        device="auto",
        precision="auto",
        num_workers="auto",
        cache_frozen=True,
        memory=None,
        checkpoint_dir=None,
        tta="none",
        verbose=1,
        **kwargs,
    ):
        _store_params(self, locals())

    # ------------------------------------------------------------------ targets

    def _encode_targets(self, y, n_items, continue_training, classes, what="y"):
        y = _require_y(self, y, what)
        y_type = type_of_target(y, input_name=what)
        if y_type == "multilabel-indicator":
            return self._encode_multilabel(y, n_items, continue_training, what)
        if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
            raise InputError(
                f"{what} must be 1-D (one label per item) or a 2-D indicator matrix (multi-label, "
                f"as from MultiLabelBinarizer); got shape {y.shape} ({y_type})."
            )
        y = column_or_1d(y, warn=True)  # a column vector warns (DataConversionWarning)
        _check_length(n_items, len(y), what)
        check_classification_targets(y)
        if continue_training:
            if self._multilabel():
                raise InputError(
                    f"{what} has one label per item, but this classifier was fitted on "
                    f"multi-label targets ({len(self.classes_)} labels): pass an indicator "
                    "matrix."
                )
            remedy = (
                "every class must be in y"
                if what == "y_val"
                else "pass classes= to the first partial_fit"
            )
            return self._encode_known(y, what, remedy)
        seen = y if classes is None else np.concatenate([np.asarray(classes), y])
        encoder = LabelEncoder().fit(seen)
        if len(encoder.classes_) < 2:
            raise InputError(
                f"y contains only one class ({encoder.classes_[0]!r}, n_samples={len(y)}); a "
                "classifier needs samples of at least 2 classes."
            )
        self.classes_ = encoder.classes_
        self.target_type_ = "binary" if len(self.classes_) == 2 else "multiclass"
        return encoder.transform(y)

    def _encode_multilabel(self, y, n_items, continue_training, what):
        """A 0/1 indicator matrix (one column per label) as float32 targets."""
        y = check_array(y, dtype=None, input_name=what)
        _check_length(n_items, len(y), what)
        if continue_training:
            if not self._multilabel() or y.shape[1] != len(self.classes_):
                raise InputError(
                    f"{what} is an indicator matrix of {y.shape[1]} labels, but this classifier "
                    f"was fitted on {self._targets_description()}."
                )
        else:
            self.classes_ = np.arange(y.shape[1])
            self.target_type_ = "multilabel-indicator"
        return np.asarray(y, dtype=np.float32)

    def _targets_description(self) -> str:
        if self._multilabel():
            return f"multi-label targets ({len(self.classes_)} labels)"
        return f"one label per item (classes_={self.classes_.tolist()[:10]})"

    def _encode_known(self, y, what, remedy):
        """Codes of labels ``y`` that must all be in ``classes_``."""
        unseen = np.setdiff1d(y, self.classes_)
        if len(unseen):
            raise InputError(
                f"{what} contains labels {unseen[:5].tolist()} not in the classes of the fit "
                f"(classes_={self.classes_.tolist()[:10]}); {remedy}."
            )
        encoder = LabelEncoder()
        encoder.classes_ = self.classes_
        return encoder.transform(y)

    def _multilabel(self) -> bool:
        return (
            getattr(self, "target_type_", None) == "multilabel-indicator"
        )  # older pickles: single-label

    def _split(self, y_enc, fraction, seed, *, option, remedy):
        if self._multilabel():  # label sets cannot be stratified: a shuffled split
            return random_split(len(y_enc), fraction, seed, option=option, remedy=remedy)
        return stratified_split(self.classes_[y_enc], fraction, seed, option=option, remedy=remedy)

    def _n_outputs(self) -> int:
        return len(self.classes_)

    def _probe_head(self, F, y_enc):
        """Logistic regression on the features (one per label for multi-label targets),
        as the rows and biases of the linear head's logits."""
        if self._multilabel():
            labels = y_enc.astype(int)
            rows = [_logistic_rows(F, labels[:, j], None) for j in range(labels.shape[1])]
            # each label's logit: twice the second of its two symmetric rows
            return 2 * np.vstack([w[-1:] for w, _ in rows]), 2 * np.concatenate(
                [b[-1:] for _, b in rows]
            )
        weights = None
        if isinstance(self.class_weight, dict):
            weights = {i: float(self.class_weight.get(c, 1.0)) for i, c in enumerate(self.classes_)}
        elif self.class_weight == "balanced":
            weights = "balanced"
        return _logistic_rows(F, y_enc, weights, n_classes=len(self.classes_))

    def _target_labels(self) -> list:
        return self.classes_.tolist()

    def _tta_average(self) -> str:
        return "sigmoid" if self._multilabel() else "softmax"

    def _skorch_net(self, y_enc):
        weights = None
        if self._multilabel():
            if isinstance(self.class_weight, dict):
                raise InputError(
                    "class_weight as a dict applies to single-label targets; with multi-label "
                    "targets use class_weight='balanced' (each label's positives weighted by "
                    "its negatives / positives) or None."
                )
            if self.class_weight == "balanced":
                positives = y_enc.sum(axis=0)
                weights = (len(y_enc) - positives) / np.maximum(positives, 1)
            criterion_kwargs = {"criterion__label_smoothing": float(self.label_smoothing)}
            if weights is not None:
                criterion_kwargs["criterion__pos_weight"] = torch.as_tensor(
                    weights, dtype=torch.float32
                )
            return SkorchTransferNetRegressor, MultiLabelLoss, criterion_kwargs
        if self.class_weight == "balanced":
            codes = np.arange(len(self.classes_))
            weights = compute_class_weight("balanced", classes=codes, y=y_enc)
        elif self.class_weight is not None:
            weights = np.asarray([float(self.class_weight.get(c, 1.0)) for c in self.classes_])
        kwargs = {
            "criterion__label_smoothing": float(self.label_smoothing),
            "classes": list(range(len(self.classes_))),
        }
        if weights is not None:
            kwargs["criterion__weight"] = torch.as_tensor(weights, dtype=torch.float32)
        return SkorchTransferNet, nn.CrossEntropyLoss, kwargs

    # ------------------------------------------------------------------ predict

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``; with multi-label
        targets, each label's probability (columns do not sum to 1)."""
        logits = self._outputs(X)
        return _sigmoid(logits) if self._multilabel() else _softmax(logits)

    def decision_function(self, X) -> np.ndarray:
        """Confidence scores, as in scikit-learn's classifiers: the head's logits, shape
        (n_samples, n_classes); with two classes, shape (n_samples,), the logit of
        ``classes_[1]`` minus that of ``classes_[0]`` (positive: ``classes_[1]``). With
        multi-label targets, each label's logit, shape (n_samples, n_labels)."""
        logits = self._outputs(X)
        if self._multilabel() or logits.shape[1] != 2:
            return logits
        return logits[:, 1] - logits[:, 0]

    def predict(self, X) -> np.ndarray:
        """Predicted labels (elements of ``classes_``); with multi-label targets, the
        indicator matrix of the labels whose probability is at least ``threshold``."""
        logits = self._outputs(X)  # first: it raises NotFittedError before fit
        if self._multilabel():
            return (_sigmoid(logits) >= self.threshold).astype(int)
        return self.classes_[np.argmax(logits, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class FineTuneRegressor(RegressorMixin, _FineTuneEstimator):
    """Fine-tune a pretrained backbone with a new head, as a scikit-learn regressor.

    The sibling of :class:`FineTuneClassifier`, with the same parameters, freeze
    depths (``unfreeze``), backbones (images and texts), recipe, cache (``memory=``),
    checkpoints and callbacks; see it for every parameter not listed here. What differs
    is the target: ``y`` holds floats, 1-D (one target) or 2-D (several targets,
    multi-output). The targets are standardised for training (each column to mean 0
    and standard deviation 1, from the training data) and predictions are returned in
    the original units. ``score`` is the coefficient of determination R^2, as for every
    scikit-learn regressor, so ``GridSearchCV(..., scoring="neg_mean_absolute_error")``
    and the other regression scorers work.

    Parameters
    ----------
    backbone, pretrained, unfreeze, head, head_dropout, head_init, pooling, lr, backbone_lr_scale, \
layer_decay, weight_decay, optimizer, warmup_epochs, lr_schedule, max_epochs, batch_size, \
augment, early_stopping, callbacks, random_state, device, precision, num_workers, \
cache_frozen, memory, checkpoint_dir, verbose, **kwargs
        As in :class:`FineTuneClassifier`.
    loss : {"squared_error", "absolute_error", "huber"}, default="squared_error"
        The training loss on the standardised targets: squared error
        (``torch.nn.MSELoss``), absolute error (``torch.nn.L1Loss``, robust to
        outliers), or Huber (``torch.nn.HuberLoss`` with ``delta=1``, i.e. one
        standard deviation of the target: squared below it, absolute above).
    validation_split : float, tuple (X_val, y_val) or None, default=0.2
        A shuffled (not stratified) fraction of the training data held out for
        validation, or explicit validation data; with ``unfreeze="auto"``, the
        hold-out that chooses the depth (see :class:`FineTuneClassifier`).
    tta : {"none", "flip", "flip+crops"}, default="none"
        Test-time augmentation of ``predict``: the mean prediction over the views (see
        :class:`FineTuneClassifier`). Image backbones only.

    Attributes
    ----------
    n_outputs_ : int
        Number of targets (columns of a 2-D ``y``; 1 for a 1-D ``y``).
    target_mean_, target_scale_ : ndarray of shape (n_outputs_,)
        The mean and standard deviation of each training target (a constant target
        has scale 1): the network predicts ``(y - target_mean_) / target_scale_``.
    target_type_ : {"continuous", "continuous-multioutput"}
        As :func:`sklearn.utils.multiclass.type_of_target` names 1-D and 2-D targets.
    net_, history_, backbone_, n_frozen_, unfreeze_, unfreeze_scores_, device_, \
n_features_in_
        As in :class:`FineTuneClassifier`.

    See Also
    --------
    FineTuneClassifier, sktransfer.PretrainedFeatureExtractor

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer import FineTuneRegressor
    >>> d = load_digits()
    >>> reg = FineTuneRegressor(max_epochs=2, validation_split=None, verbose=0,
    ...                         random_state=0).fit(d.images[:60], d.target[:60] / 9)
    >>> reg.predict(d.images[:3]).shape, reg.predict(d.images[:3]).dtype
    ((3,), dtype('float64'))
    """

    _parameter_constraints = {
        **_FineTuneEstimator._parameter_constraints,
        "loss": [StrOptions(set(_REGRESSION_LOSSES))],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        pretrained=True,
        unfreeze="auto",
        head=None,
        head_dropout=0.0,
        head_init="random",
        pooling="auto",
        loss="squared_error",
        lr=1e-3,
        backbone_lr_scale=0.1,
        layer_decay=1.0,
        weight_decay=1e-4,
        optimizer="adamw",
        warmup_epochs=0,
        lr_schedule="onecycle",
        max_epochs=6,
        batch_size=32,
        augment=None,
        validation_split=0.2,
        early_stopping=5,
        callbacks=None,
        random_state=None,
        device="auto",
        precision="auto",
        num_workers="auto",
        cache_frozen=True,
        memory=None,
        checkpoint_dir=None,
        tta="none",
        verbose=1,
        **kwargs,
    ):
        _store_params(self, locals())

    def partial_fit(self, X, y):
        """Continue training for ``max_epochs`` more epochs (fits first if needed), with
        the target scaling of the first fit."""
        return super().partial_fit(X, y)

    # ------------------------------------------------------------------ targets

    def _encode_targets(self, y, n_items, continue_training, classes, what="y"):
        y = _require_y(self, y, what)
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name=what)
        if y.ndim != 1 and y.ndim != 2:
            raise InputError(f"{what} must be 1-D or 2-D (n_samples, n_targets); got {y.shape}.")
        _check_length(n_items, len(y), what)
        y2 = y.reshape(len(y), -1)
        if continue_training:
            if y2.shape[1] != self.n_outputs_:
                raise InputError(
                    f"{what} has {y2.shape[1]} target(s) per item, but this regressor was "
                    f"fitted on {self.n_outputs_}."
                )
        else:
            scale = y2.std(axis=0)
            self.n_outputs_ = y2.shape[1]
            self.target_mean_ = y2.mean(axis=0)
            self.target_scale_ = np.where(scale > 0, scale, 1.0)
            self.target_type_ = "continuous" if y.ndim == 1 else "continuous-multioutput"
        return ((y2 - self.target_mean_) / self.target_scale_).astype(np.float32)

    def _split(self, y_enc, fraction, seed, *, option, remedy):
        return random_split(len(y_enc), fraction, seed, option=option, remedy=remedy)

    def _n_outputs(self) -> int:
        return self.n_outputs_

    def _probe_head(self, F, y_enc):
        """Ridge regression of the standardized targets on the features."""
        ridge = Ridge(alpha=1.0).fit(F, y_enc)
        return ridge.coef_.reshape(self.n_outputs_, -1), np.ravel(ridge.intercept_)

    def _target_labels(self) -> list:
        return [f"target {i}" for i in range(self.n_outputs_)]

    def _tta_average(self) -> str:
        return "mean"

    def _skorch_net(self, y_enc):
        return SkorchTransferNetRegressor, _REGRESSION_LOSSES[self.loss], {}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        # A network for images, fed tabular rows as tiny images, does not reach the R^2 of
        # 0.5 on make_regression that scikit-learn expects of tabular regressors.
        tags.regressor_tags.poor_score = True
        return tags

    # ------------------------------------------------------------------ predict

    def predict(self, X) -> np.ndarray:
        """Predicted targets in the units of ``y``: shape (n_samples,) for one target,
        (n_samples, n_outputs_) for several."""
        out = self._outputs(X).astype(np.float64) * self.target_scale_ + self.target_mean_
        return out.ravel() if self.n_outputs_ == 1 else out


def _store_params(estimator, init_locals: dict) -> None:
    """``__init__``'s arguments stored unchanged under their names (scikit-learn's
    convention); ``**kwargs`` (skorch-prefixed parameters) apart, checked by ``fit``."""
    params = {k: v for k, v in init_locals.items() if k not in ("self", "kwargs", "__class__")}
    for name, value in params.items():
        setattr(estimator, name, value)
    estimator._skorch_kwargs = dict(init_locals.get("kwargs", {}))


def _require_y(estimator, y, what: str) -> np.ndarray:
    if y is None:
        raise InputError(
            f"{type(estimator).__name__} requires y to be passed, but the target {what} is None: "
            "pass one target per item of X."
        )
    return np.asarray(y)


def _check_length(n_items: int, n_targets: int, what: str) -> None:
    if n_targets != n_items:
        X = "X_val" if what == "y_val" else "X"
        raise InputError(
            f"{X} has {n_items} items but {what} has {n_targets} targets; they must match."
        )


def _linear_layer(head: nn.Module):
    """The head's linear layer when the head is linear (dropout in front allowed)."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    if isinstance(layers[-1], nn.Linear) and all(isinstance(m, nn.Dropout) for m in layers[:-1]):
        return layers[-1]
    return None


def _logistic_rows(F, y, class_weight, n_classes=2):
    """A logistic regression of codes ``y`` on features ``F`` as (n_classes, d) logit rows
    and biases; a binary model's one decision function ``d`` becomes ``(-d/2, d/2)``,
    whose softmax is ``sigmoid(d)``. A label that never varies gets its frequency."""
    present = np.unique(y)
    if len(present) < 2:
        rate = np.clip(float(np.mean(y)), 1e-3, 1 - 1e-3)
        logit = np.log(rate / (1 - rate))
        return np.zeros((2, F.shape[1])), np.array([-logit / 2, logit / 2])
    model = LogisticRegression(max_iter=1000, class_weight=class_weight).fit(F, y)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-1, 1]) * intercept[0] / 2
    weight = np.zeros((n_classes, F.shape[1]))
    bias = np.full(n_classes, intercept.min() - 5.0)  # a class absent from the training part
    weight[present], bias[present] = coef, intercept
    return weight, bias


@contextlib.contextmanager
def _item_errors(estimator: str, during: str):
    """Re-raise an unreadable-item error with what applies to ``estimator``: it reads
    every item and has no ``on_error`` (the extractor's remedy is replaced)."""
    try:
        yield
    except ItemLoadError as exc:
        reason = exc.reason.rstrip(". ")
        first = "" if exc.index is None else f" (the first: item {exc.index} of X"
        if first:
            first += f", {exc.item})" if exc.item else ")"
        labels = " and their labels in y" if during == "fit" else ""
        raise ItemLoadError(
            f"{reason}. {estimator} reads every item during {during} and has no on_error "
            f"option: fix or remove the unreadable item(s){first}{labels}.",
            index=exc.index,
            item=exc.item,
        ) from exc


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|
