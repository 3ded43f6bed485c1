"""Training-time augmentation presets, sized from the backbone's preprocessing.

``augment="light"``: random resized crop (zoom 0.6-1.0) and horizontal flip.
``augment="strong"``: random resized crop (zoom 0.3-1.0), horizontal flip, a
small affine shear/rotation (10 degrees) and color jitter.
A user transform (any picklable callable on an RGB PIL image or a float
tensor in [0, 1], such as a torchvision ``v2.Compose``) is applied as given;
the backbone's resize to its input size and normalization follow it.

Examples
--------
>>> from sktransfer.backbones import DataConfig
>>> from PIL import Image
>>> aug = make_augment("strong", DataConfig(input_size=32))
>>> aug(Image.new("RGB", (64, 48))).size
(32, 32)
"""

from __future__ import annotations

from .exceptions import InputError
from .io import resample

__all__ = ["PRESETS", "make_augment", "RandomResizedCrop"]

PRESETS = ("light", "strong")


def make_augment(augment, data_config):
    """Resolve ``augment`` (None, a preset name or a callable) into a transform or None.

    Parameters
    ----------
    augment : None, "none", "light", "strong" or callable
        A preset (see the module docstring) or a transform used as given.
    data_config : DataConfig
        The backbone's preprocessing; presets crop to its ``input_size``.

    Returns
    -------
    callable or None

    Examples
    --------
    >>> from PIL import Image
    >>> from sktransfer.augment import make_augment
    >>> from sktransfer.backbones import DataConfig
    >>> make_augment(None, DataConfig()) is None
    True
    >>> light = make_augment("light", DataConfig(input_size=24))
    >>> light(Image.new("RGB", (60, 40))).size
    (24, 24)
    """
    if augment is None or augment is False or augment == "none":
        return None
    if callable(augment):
        return augment
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    size = data_config.input_size
    interp = InterpolationMode(data_config.interpolation)
    if augment == "light":
        return T.Compose(
            [RandomResizedCrop(size, (0.6, 1.0), data_config.interpolation), T.RandomHorizontalFlip()]
        )
    if augment == "strong":
        return T.Compose(
            [
                RandomResizedCrop(size, (0.3, 1.0), data_config.interpolation),
                T.RandomHorizontalFlip(),
                T.RandomAffine(degrees=10, shear=10, interpolation=interp),
                T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
            ]
        )
    raise InputError(
        f"augment must be None, one of {PRESETS} or a callable transform; got {augment!r}."
    )


class RandomResizedCrop:
    """torchvision's random resized crop (same sampling of area and aspect ratio, from
    torch's RNG), resampled by :func:`sktransfer.io.resample` like every other resize, so
    images and arrays are augmented alike (a PIL image stays a PIL image).

    Examples
    --------
    >>> import torch
    >>> from PIL import Image
    >>> crop = RandomResizedCrop(16, scale=(0.5, 1.0))
    >>> crop(Image.new("RGB", (40, 30))).size, tuple(crop(torch.rand(3, 30, 40)).shape)
    ((16, 16), (3, 16, 16))
    """

    def __init__(self, size: int, scale=(0.08, 1.0), interpolation: str = "bilinear",
                 ratio=(3 / 4, 4 / 3)):
        self.size = size
        self.scale = scale
        self.interpolation = interpolation
        self.ratio = ratio

    def __call__(self, img):
        from torchvision.transforms import RandomResizedCrop as _TorchvisionCrop

        top, left, h, w = _TorchvisionCrop.get_params(img, list(self.scale), list(self.ratio))
        box = (left, top, left + w, top + h)
        return resample(img, (self.size, self.size), self.interpolation, box=box)

    def __repr__(self) -> str:
        return (
            f"RandomResizedCrop(size={self.size}, scale={self.scale}, "
            f"interpolation={self.interpolation!r})"
        )
