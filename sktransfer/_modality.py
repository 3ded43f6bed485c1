"""Modalities: what a backbone's inputs are, and how they reach the network.

An image backbone and a text backbone differ only here: how a user's ``X``
becomes a source of items (:meth:`Modality.as_source`), the preprocessing
(:meth:`Modality.transform`: resize, crop and normalize, or tokenize), a
one-item example input, the default batch size,
and whether activations below the pooled output can be cached (token states of
texts vary in length). This is the one module that says ``"text"``; the rest of
the package asks the backbone's modality (:func:`get_modality`).

Examples
--------
>>> from torch import nn
>>> from sktransfer.backbones import Backbone, DataConfig
>>> bb = Backbone([("conv", nn.Conv2d(3, 4, 3))], DataConfig(input_size=8), name="tiny")
>>> modality = get_modality(bb)
>>> modality.name, tuple(modality.example_input(bb).shape), modality.caches_unpooled
('image', (1, 3, 8, 8), True)
>>> get_modality("text").as_source(["a text"]).kind
'text'
"""

from __future__ import annotations

from typing import Any

import torch

from ._backbone import TextConfig
from ._runtime import Collate
from .exceptions import BackboneError, ItemLoadError
from .io import ImageTransform, as_image_source, as_text_source, is_image_path

__all__ = [
    "Modality",
    "IMAGE",
    "TEXT",
    "get_modality",
    "as_source",
    "make_transform",
    "TextTransform",
]


class Modality:
    """What a backbone's inputs are (see the module docstring).

    Attributes
    ----------
    name : str
        ``"image"`` or ``"text"``, the backbone's ``modality`` string.
    auto_batch_size : dict
        ``batch_size="auto"`` on ``"cpu"`` and on ``"cuda"``.
    caches_unpooled : bool
        Whether stage outputs before pooling have one shape per model (and can be
        cached and batched as tensors), or vary per item.
    augmentable : bool
        Whether training-time augmentation (:mod:`sktransfer.augment`) applies.
    spatial : bool
        Whether the inputs are pixels on a grid, which Grad-CAM maps a stage back onto.
    """

    name: str = ""
    auto_batch_size: dict = {"cpu": 8, "cuda": 64}
    caches_unpooled: bool = True
    augmentable: bool = False
    spatial: bool = False

    def as_source(self, X: Any, *, check_files: bool = True):
        """The validated source of items behind ``X``."""
        raise NotImplementedError

    def transform(self, backbone, augment=None):
        """The preprocessing the backbone's weights expect."""
        raise NotImplementedError

    def example_input(self, backbone, device=None):
        """A one-item input batch for ``backbone``, after preprocessing."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<modality {self.name!r}>"

    def __reduce__(self):  # the same object after unpickling
        return get_modality, (self.name,)


class ImageModality(Modality):
    name = "image"
    auto_batch_size = {"cpu": 8, "cuda": 64}  # see _runtime.resolve_batch_size
    caches_unpooled = True
    augmentable = True
    spatial = True

    def as_source(self, X: Any, *, check_files: bool = True):
        try:
            return as_image_source(X, check_files=check_files)
        except ItemLoadError as exc:
            items = list(X) if isinstance(X, (list, tuple)) else []
            if items and all(isinstance(t, str) and not is_image_path(t) for t in items[:20]):
                raise ItemLoadError(
                    f"{exc.reason} These look like texts, not image paths: use a text backbone "
                    "such as 'all-MiniLM-L6-v2'.",
                    index=exc.index,
                    item=exc.item,
                    remedy=exc.remedy,
                ) from exc
            raise

    def transform(self, backbone, augment=None):
        return ImageTransform(backbone.data_config, augment)

    def example_input(self, backbone, device=None):
        cfg = backbone.data_config
        return torch.zeros(1, cfg.in_chans, cfg.input_size, cfg.input_size, device=device)


class TextTransform:
    """Tokenization of a text backbone: truncation to ``max_length``, padding per batch."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> dict:
        return dict(
            self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        )

    @property
    def data_config(self) -> TextConfig:
        return TextConfig(self.max_length)

    def __repr__(self) -> str:
        return f"TextTransform({type(self.tokenizer).__name__}, max_length={self.max_length})"


# Text nets pickled before the one batch iterator name this class as their collate_fn;
# batches are collated by the dataset's collate now (sktransfer._runtime.Collate).
TextCollate = Collate


class TextModality(Modality):
    name = "text"
    # short sequences; batches are length-sorted, so padding stays small
    auto_batch_size = {"cpu": 64, "cuda": 256}
    caches_unpooled = False  # token states vary in length: only pooled features are cached
    augmentable = False

    def as_source(self, X: Any, *, check_files: bool = True):
        return as_text_source(X)

    def transform(self, backbone, augment=None):
        return TextTransform(backbone.tokenizer, backbone.data_config.max_length)

    def example_input(self, backbone, device=None):
        batch = backbone.tokenizer(["example"], return_tensors="pt")
        return {k: v.to(device) for k, v in batch.items()}


IMAGE = ImageModality()
TEXT = TextModality()
_MODALITIES = {m.name: m for m in (IMAGE, TEXT)}


def get_modality(backbone_or_name) -> Modality:
    """The :class:`Modality` of a backbone (or of a modality name, or a Modality).

    Examples
    --------
    >>> get_modality("text").auto_batch_size
    {'cpu': 64, 'cuda': 256}
    """
    if isinstance(backbone_or_name, Modality):
        return backbone_or_name
    name = backbone_or_name if isinstance(backbone_or_name, str) else backbone_or_name.modality
    try:
        return _MODALITIES[name]
    except KeyError:
        raise BackboneError(
            f"Unknown modality {name!r}; known: {sorted(_MODALITIES)}."
        ) from None


def as_source(X: Any, modality, *, check_files: bool = True):
    """The source for ``X`` given the backbone's modality (a :class:`Modality` or its name)."""
    return get_modality(modality).as_source(X, check_files=check_files)


def make_transform(backbone, augment=None):
    """The preprocessing a backbone's weights expect (tokenization for text backbones)."""
    return get_modality(backbone).transform(backbone, augment)
