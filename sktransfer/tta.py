"""Test-time augmentation: average a fine-tuned network's predictions over flipped and
cropped views of each preprocessed image (class probabilities, per-label probabilities,
or regression outputs).

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

__all__ = ["TTA_MODES", "TTAClassifierNet", "TTANet", "tta_views"]

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


class TTANet(nn.Module):
    """``net`` averaged over the test-time views of ``mode``, in the space where averaging
    means something, and returned in the space of ``net``'s outputs:

    - ``"softmax"`` (single-label logits): the log of the mean softmax probability, so
      ``softmax`` of the output is the averaged probability and its ``argmax`` the
      averaged prediction;
    - ``"sigmoid"`` (multi-label logits): the logit of each label's mean probability;
    - ``"mean"`` (regression outputs): the mean output.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    >>> x = torch.randn(2, 3, 4, 4)
    >>> mean = (net(x) + net(x.flip(-1))) / 2
    >>> bool(torch.allclose(TTANet(net, "flip", "mean")(x), mean, atol=1e-6))
    True
    >>> p = (torch.sigmoid(net(x)) + torch.sigmoid(net(x.flip(-1)))) / 2
    >>> bool(torch.allclose(torch.sigmoid(TTANet(net, "flip", "sigmoid")(x)), p, atol=1e-6))
    True
    """

    AVERAGES = ("softmax", "sigmoid", "mean")

    def __init__(self, net: nn.Module, mode: str = "flip", average: str = "softmax"):
        super().__init__()
        if average not in self.AVERAGES:
            raise InputError(f"average={average!r}: use one of {list(self.AVERAGES)}.")
        self.net = net
        self.views = tta_views(mode)
        self.average = average

    def forward(self, x):
        outputs = [self.net(view(x)).float() for view in self.views]
        if self.average == "mean":
            return sum(outputs) / len(outputs)
        if self.average == "sigmoid":
            p = sum(torch.sigmoid(z) for z in outputs) / len(outputs)
            return torch.logit(p, eps=1e-6)
        probs = sum(torch.softmax(z, dim=1) for z in outputs) / len(outputs)
        return probs.clamp_min(1e-12).log()


class TTAClassifierNet(TTANet):
    """``net`` (images to single-label logits) averaged over test-time views: returns the
    log of the mean softmax probability (``TTANet(net, mode, "softmax")``)."""

    def __init__(self, net: nn.Module, mode: str = "flip"):
        super().__init__(net, mode, "softmax")
