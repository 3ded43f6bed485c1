"""PretrainedFeatureExtractor: a frozen pretrained backbone as a scikit-learn transformer."""

from __future__ import annotations

import copy
import os
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from torch import nn

from . import _runtime
from ._backbone import StagedNet
from ._modality import get_modality
from ._validation import (
    HasMethods,
    Interval,
    StrOptions,
    check_fitted,
    check_input,
    validate_params,
)
from .backbones import Backbone, Pooling, load_backbone
from .cache import FeatureMemory, cached_inference, module_fingerprint, resolve_memory
from .exceptions import DeviceWarning
from .io import make_dataset

__all__ = ["PretrainedFeatureExtractor"]


class PretrainedFeatureExtractor(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Deep features from a frozen pretrained network, as a scikit-learn transformer.

    ``fit`` loads the weights (nothing is loaded at construction); ``transform``
    decodes, preprocesses and runs the backbone batch by batch, streaming: memory
    is bounded by ``batch_size``, not by the number of images.

    Parameters
    ----------
    backbone : str, path, nn.Module or BackboneSpec, default="efficientnet_lite0"
        A name from :func:`sktransfer.backbones.list_backbones` (the default
        ships its ImageNet weights and works offline), a torchvision or timm
        model name (``"torchvision/resnet50"``, ``"timm/convnext_tiny"``), a
        checkpoint saved by :func:`sktransfer.backbones.save_backbone`, or a
        module with its preprocessing (:class:`~sktransfer.backbones.BackboneSpec`).
    pretrained : bool, default=True
        ``False`` builds the same architecture with random weights, without any
        download (as in :class:`~sktransfer.FineTuneClassifier`).
    layer : str, int or None, default=None
        Take features after this stage (``"blocks.3"``, or an index into
        ``backbone_.stage_names``); None means the final features.
    pooling : {"auto", "avg", "mean", "max", "token", "cls", "cls+mean", "last", "none", "flatten"}, default="auto"
        How a feature map or token sequence becomes one vector per image or text.
        ``"auto"``: the model's own representation: at the last layer of a timm or
        torchvision model its pre-logits (a ViT's class token after the final
        norm, the pooled map of a CNN), for a sentence-transformers folder its
        pooling and normalization, CLIP's projected features, a decoder's last
        token (see docs/text.md); at an earlier layer, the mean over space or over
        the patch tokens. ``"avg"``/``"mean"``: the mean over space or tokens (at
        the last layer of a timm or torchvision model, its pre-logits, as
        ``"auto"``). ``"token"``/``"cls"``: the class token; ``"last"``: the last
        real token; ``"cls+mean"``: both, concatenated (the DINOv2 linear-probe
        recipe); ``"max"``: the maximum.
    batch_size : int or "auto", default="auto"
        Images per forward pass. ``"auto"``: 8 on the CPU (larger batches
        measured slower there, see benchmarks/extract_throughput.py), 64 on CUDA.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        ``"auto"``: mixed precision (autocast) on CUDA; on the CPU, bf16 where the
        CPU has native bf16 (AVX512-BF16 or AMX: 1.4x to 1.8x the fp32 throughput,
        same ImageNet top-1, in benchmarks/README.md) and fp32 elsewhere, where bf16 is emulated and
        many times slower (an explicit ``"bf16"`` there warns). ``sktransfer info``
        shows the choice for this machine.
    num_workers : int or "auto", default="auto"
        DataLoader worker processes for decoding; ``"auto"`` picks 0 on
        machines with 2 cores or fewer.
    memory : None, str, joblib.Memory or FeatureMemory, default=None
        Keep features on disk, keyed by the weights, layer, pooling,
        preprocessing and each image's content, and reuse them in later
        calls and other processes (see :mod:`sktransfer.cache`).
    on_error : {"raise", "warn", "ignore"}, default="raise"
        What an unreadable item does: raise an error naming it, or give a NaN
        row (with a warning listing the failures for ``"warn"``). Row count
        and order never change.
    verbose : int, default=0
        ``>= 1`` shows a progress bar.

    Attributes
    ----------
    backbone_ : Backbone
        The loaded network (eval mode, frozen) with its preprocessing.
    transform_ : ImageTransform or TextTransform
        The preprocessing applied to every image (tokenization for texts).
    device_ : torch.device
    precision_ : str
        Resolved precision (``"fp32"``, ``"bf16"`` or ``"fp16"``).
    n_features_out_ : int
        Length of one feature vector.
    n_features_in_ : int
        1 (one column of images), or ``d`` for a 2-D numeric array of flattened images.
        Not set by ``fit()`` without ``X``.
    feature_names_in_ : ndarray of str
        The column name, when fitted on a one-column DataFrame.

    See Also
    --------
    sktransfer.FineTuneClassifier : fine-tune the same backbones.
    sktransfer.datasets.load_image_folder : list a class-per-folder dataset.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> X = load_digits().images[:4]
    >>> ext = PretrainedFeatureExtractor(batch_size=4).fit(X)
    >>> ext.transform(X).shape
    (4, 1280)
    >>> ext.get_feature_names_out()[:2].tolist()
    ['pretrainedfeatureextractor0', 'pretrainedfeatureextractor1']
    """

    _parameter_constraints = {
        "backbone": "no_validation",  # checked by load_backbone, which knows every source
        "pretrained": ["boolean"],
        "layer": [str, Integral, None],
        "pooling": [StrOptions(set(Pooling.MODES))],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "device": [str, torch.device],
        "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
        "num_workers": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "on_error": [StrOptions({"raise", "warn", "ignore"})],
        "memory": [None, str, os.PathLike, HasMethods(["cache"]), FeatureMemory],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        pretrained=True,
        layer=None,
        pooling="auto",
        batch_size="auto",
        device="auto",
        precision="auto",
        num_workers="auto",
        on_error="raise",
        memory=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.layer = layer
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.on_error = on_error
        self.memory = memory
        self.verbose = verbose

    # ------------------------------------------------------------------ fit / transform

    def fit(self, X=None, y=None):
        """Load the backbone on the device; ``X`` is only validated (nothing is learned).

        Parameters
        ----------
        X : images, optional
            Any input :meth:`transform` accepts; validated and used to record
            ``n_features_in_`` / ``feature_names_in_``.
        y : ignored

        Returns
        -------
        self
        """
        validate_params(self)
        if X is not None:
            X = check_input(self, X, reset=True)
        else:
            # no X, no input schema to record: transform then takes any supported input
            for attr in ("n_features_in_", "feature_names_in_"):
                if hasattr(self, attr):
                    delattr(self, attr)
        self.device_ = _runtime.resolve_device(self.device)
        dtype = _runtime.resolve_precision(self.precision, self.device_)
        self.precision_ = _runtime.precision_name(dtype)
        backbone = self._load_backbone()
        if X is not None:  # texts for a text backbone, images otherwise: say so now
            get_modality(backbone).as_source(X, check_files=False)
        self.stop_ = backbone.stage_index(self.layer)
        if self.stop_ == len(backbone.stages):  # the last stage, as this pooling needs it
            backbone = _runtime.prepare_module(backbone.for_pooling(self.pooling), self.device_)
        self.backbone_ = backbone
        self.transform_ = get_modality(self.backbone_).transform(self.backbone_)
        self.n_features_out_ = self._probe_n_features()
        return self

    def transform(self, X):
        """Features of each image, in input order.

        Parameters
        ----------
        X : sequence of paths, PIL images or arrays; numeric array; pandas
            Series or one-column DataFrame; or a folder path.

        Returns
        -------
        ndarray of shape (n_samples, n_features_out_), float32
        """
        check_fitted(self, "backbone_")
        X = check_input(self, X, reset=False)
        modality = get_modality(self.backbone_)
        source = modality.as_source(X, check_files=self.on_error == "raise")
        net = self._feature_net()
        memory = resolve_memory(self.memory)
        return cached_inference(
            net,
            make_dataset(source, self.transform_),
            memory=memory,
            model_key=None if memory is None else self._cache_key(net),
            batch_size=_runtime.resolve_batch_size(self.batch_size, self.device_, modality),
            device=self.device_,
            dtype=self._dtype(),
            num_workers=_runtime.resolve_num_workers(self.num_workers),
            on_error=self.on_error,
            verbose=self.verbose,
            desc=type(self).__name__,
        )

    # ------------------------------------------------------------------ helpers

    def _load_backbone(self) -> Backbone:
        with _runtime.quiet_loading(self.verbose):
            # a copy: never move or modify the user's module
            bb = load_backbone(self.backbone, pretrained=self.pretrained, copy=True)
        bb.eval().requires_grad_(False)
        return _runtime.prepare_module(bb, self.device_)

    def _feature_net(self) -> StagedNet:
        # the first stop_ stages only: the cache key covers the weights that run
        return StagedNet(self.backbone_.truncated(self.stop_), pooling=self.pooling)

    def _cache_key(self, net: nn.Module) -> str:
        return module_fingerprint(
            net,
            data_config=self.transform_.data_config.to_dict(),
            precision=self.precision_,
            device=self.device_.type,
        )

    def _dtype(self):
        return _runtime.PRECISION_DTYPES[self.precision_]

    def _probe_n_features(self) -> int:
        net = self._feature_net().eval()
        with torch.inference_mode():
            out = net(get_modality(self.backbone_).example_input(self.backbone_, self.device_))
        return int(np.prod(out.shape[1:]))

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    # ------------------------------------------------------------------ pickling

    def __getstate__(self):
        state = super().__getstate__()
        if "backbone_" in state and self.device_.type != "cpu":
            state["backbone_"] = copy.deepcopy(self.backbone_).cpu()
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "backbone_" in state:
            device = self.device_
            if device.type == "cuda" and not torch.cuda.is_available():
                warnings.warn(
                    "This extractor was fitted on CUDA, which is not available here; it now runs "
                    "on the CPU.",
                    DeviceWarning,
                    stacklevel=2,
                )
                self.device_ = torch.device("cpu")
            self.backbone_ = _runtime.prepare_module(self.backbone_, self.device_)
