"""Test-time augmentation: average a classifier's probabilities over flipped and cropped
views of each preprocessed image.

The views are computed on the batch tensor the network receives (after resize, crop and
normalization), so they cost one forward pass each and need no second decode:

- ``"flip"``: the image and its horizontal mirror (2 views);
- ``"flip+crops"``: those two, plus the four corner crops and the centre crop covering
  ``crop_fraction`` of each side, resized back to the input size (bilinear) (7 views).

Examples
--------
>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
>>> tta = TTAClassifierNet(net, "flip+crops")
>>> len(tta.views), tta(torch.zeros(4, 3, 8, 8)).shape
(7, torch.Size([4, 2]))
>>> bool(torch.allclose(tta(torch.zeros(4, 3, 8, 8)).exp().sum(1), torch.ones(4)))
True
"""

from __future__ import annotations

import torch
from torch import nn

from .exceptions import InputError

__all__ = ["TTA_MODES", "TTAClassifierNet", "tta_views"]

TTA_MODES = ("none", "flip", "flip+crops")
CROP_FRACTION = 0.875


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _crop(top: float, left: float, fraction: float):
    def view(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
        i, j = round((h - ch) * top), round((w - cw) * left)
        part = x[..., i : i + ch, j : j + cw]
        return nn.functional.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)

    return view


def tta_views(mode: str, crop_fraction: float = CROP_FRACTION) -> list:
    """The view functions of ``mode`` (the identity first).

    Examples
    --------
    >>> [len(tta_views(m)) for m in ("none", "flip", "flip+crops")]
    [1, 2, 7]
    """
    if mode in (None, "none"):
        return [_identity]
    if mode == "flip":
        return [_identity, _hflip]
    if mode == "flip+crops":
        corners = [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.5, 0.5)]
        return [_identity, _hflip, *(_crop(t, left, crop_fraction) for t, left in corners)]
    raise InputError(f"tta={mode!r}: use one of {list(TTA_MODES)}.")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class TTAClassifierNet(nn.Module):
    """``net`` (images to logits) averaged over test-time views: returns the log of the
    mean softmax probability, so ``softmax`` of the output is the averaged probability and
    its ``argmax`` the averaged prediction."""

    def __init__(self, net: nn.Module, mode: str = "flip"):
        super().__init__()
        self.net = net
        self.views = tta_views(mode)

    def forward(self, x):
        probs = sum(torch.softmax(self.net(view(x)).float(), dim=1) for view in self.views)
        return (probs / len(self.views)).clamp_min(1e-12).log()
