"""The core backbone type: a network as named stages, its preprocessing and its pooling.

This module imports nothing else from the package but :mod:`sktransfer.exceptions`,
so the registry (:mod:`sktransfer.backbones`) and every source adapter
(:mod:`sktransfer._sources`) can share it without an import cycle.

Examples
--------
>>> import torch
>>> from torch import nn
>>> bb = Backbone([("conv", nn.Conv2d(3, 4, 3))], DataConfig(input_size=8), name="tiny")
>>> Pooling("avg")(bb(torch.zeros(2, 3, 8, 8))).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .exceptions import BackboneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing that a backbone's weights expect.

    An image is resized so that its shorter side is ``resize_size`` (with
    ``interpolation``), center-cropped to ``input_size`` x ``input_size``,
    scaled to [0, 1] and normalized with ``mean`` and ``std``.

    Parameters
    ----------
    input_size : int, default=224
        Side of the square crop fed to the network.
    resize_size : int, None or "auto", default="auto"
        Shorter side after resizing, before the crop. ``"auto"`` derives it from
        the input size and the crop fraction, as timm does:
        ``floor(input_size / crop_pct)`` (256 for 224). ``None`` resizes the
        whole image straight to ``input_size`` x ``input_size`` (no crop).
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bilinear"
    mean, std : tuple of float, default=ImageNet statistics
    in_chans : int, default=3
        Channels the network takes; grayscale inputs are repeated to match.
    crop_pct : float, default=0.875
        Fraction of the resized image that the crop keeps; only used to
        resolve ``resize_size="auto"``.

    Examples
    --------
    >>> DataConfig(input_size=32, resize_size=None).resize_size is None
    True
    >>> DataConfig(input_size=64).resize_size, DataConfig().resize_size
    (73, 256)
    """

    input_size: int = 224
    resize_size: int | None | str = "auto"
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_chans: int = 3
    crop_pct: float = DEFAULT_CROP_PCT

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise BackboneError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}."
            )
        if int(self.input_size) < 1:
            raise BackboneError(f"input_size must be >= 1, got {self.input_size}.")
        if not 0.0 < float(self.crop_pct) <= 1.0:
            raise BackboneError(f"crop_pct must be in (0, 1], got {self.crop_pct}.")
        if isinstance(self.resize_size, str):
            if self.resize_size != "auto":
                raise BackboneError(
                    f"resize_size must be an int, None or 'auto', got {self.resize_size!r}."
                )
            resize = int(math.floor(int(self.input_size) / float(self.crop_pct)))
            object.__setattr__(self, "resize_size", resize)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict:
        """Plain-dict form, used in checkpoints and cache keys."""
        return asdict(self)


@dataclass(frozen=True)
class TextConfig:
    """Tokenization settings of a text backbone.

    Parameters
    ----------
    max_length : int
        Longer texts are truncated to this many tokens.

    Examples
    --------
    >>> TextConfig(128).to_dict()
    {'max_length': 128}
    """

    max_length: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


class Backbone(nn.Module):
    """A network split into ordered stages, with its preprocessing.

    ``backbone(x)`` runs all stages; ``backbone(x, start=i, stop=j)`` runs
    stages ``i`` to ``j - 1``, so a frozen prefix can be computed once and
    the rest trained on top of it. The stages are also the freeze groups
    (``unfreeze=k`` trains the top ``k``) and the ``layer=`` choices.

    For library models the last stage ends in the model's own pre-logits
    (a vector per item); ``unpooled_stage``, when given, is the same last
    stage stopped before that pooling (tokens or a feature map), used by the
    pooling modes that need them (see :meth:`for_pooling`).

    Attributes
    ----------
    stages : nn.ModuleList
        The stages, in order; their names are in ``stage_names``.
    data_config : DataConfig
    classifier : nn.Module or None
        The pretrained classification head on pooled features, if any.
    name : str
    modality : str
        The name of its modality, ``"image"`` or ``"text"``;
        :func:`sktransfer._modality.get_modality` gives the object that owns the
        input conversion, transform, collate and example input.
    num_prefix_tokens : int
        Class (and register) tokens in front of the patch tokens of a token output.
    unpooled_stage : nn.Module or None
    pooled_output : bool
        Whether the last stage already pools (its output is the pre-logits vector).
    num_features : int or None
        The width of the last stage's output, as its builder knows it (the pre-logits
        length, or the channels of the last feature map); None when not declared.
        :meth:`pooled_width` reads it, so that the estimators size their head
        without a probe forward pass.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sktransfer.backbones import Backbone, DataConfig
    >>> bb = Backbone(
    ...     [("conv", nn.Conv2d(3, 4, 3)), ("act", nn.ReLU())], DataConfig(input_size=8), name="tiny"
    ... )
    >>> bb.stage_names, bb.stage_index("conv")
    (['conv', 'act'], 1)
    >>> x = torch.zeros(1, 3, 8, 8)
    >>> bb(x).shape, bb(x, stop=1).shape
    (torch.Size([1, 4, 6, 6]), torch.Size([1, 4, 6, 6]))
    """

    def __init__(
        self,
        stages: Sequence[tuple[str, nn.Module]],
        data_config: DataConfig,
        *,
        name: str,
        classifier: nn.Module | None = None,
        modality: str = "image",
        num_prefix_tokens: int = 1,
        unpooled_stage: nn.Module | None = None,
        pooled_output: bool = False,
        num_features: int | None = None,
    ):
        super().__init__()
        if not stages:
            raise BackboneError(f"Backbone {name!r} has no stages.")
        names = [str(n) for n, _ in stages]
        if len(set(names)) != len(names):
            raise BackboneError(f"Backbone {name!r} has duplicate stage names: {names}.")
        self._stage_names = names
        self.stages = nn.ModuleList([m for _, m in stages])
        self.data_config = data_config
        self.classifier = classifier
        self.name = name
        self.modality = modality
        self.num_prefix_tokens = num_prefix_tokens
        # not a registered child: it shares the last stage's parameters, and the state
        # dict (checkpoints, cache keys) lists each parameter once, under the stages
        object.__setattr__(self, "unpooled_stage", unpooled_stage)
        self.pooled_output = pooled_output
        self.num_features = None if num_features is None else int(num_features)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.unpooled_stage is not None:  # buffers it holds itself move too
            self.unpooled_stage._apply(fn, recurse)
        return self

    @property
    def stage_names(self) -> list[str]:
        return list(self._stage_names)

    def stage_index(self, layer: str | int | None) -> int:
        """Number of stages to run to reach ``layer`` (None: all of them)."""
        names = self.stage_names
        if layer is None:
            return len(names)
        if isinstance(layer, int) and not isinstance(layer, bool):
            if -len(names) <= layer < len(names):
                return layer % len(names) + 1
        elif layer in names:
            return names.index(layer) + 1
        raise BackboneError(
            f"Unknown layer {layer!r} for backbone {self.name!r}. "
            f"Valid layers: {names} (or an index from 0 to {len(names) - 1}, or None for the last)."
        )

    def pooled_width(self, mode: str) -> int | None:
        """Length of the vector per item that pooling ``mode`` makes of the last stage's
        output, when the builder declared ``num_features`` and the mode keeps that width
        (average or maximum over a map or tokens, the model's own pre-logits); None
        otherwise (the caller runs an example input through instead).

        Examples
        --------
        >>> from torch import nn
        >>> bb = Backbone([("a", nn.ReLU())], DataConfig(), name="tiny", num_features=8)
        >>> bb.pooled_width("avg"), bb.pooled_width("flatten")
        (8, None)
        """
        width = getattr(self, "num_features", None)  # Backbones pickled before it existed
        if width is None or self.modality != "image":
            return None
        keeps = ("auto", "avg") if self.pooled_output else ("auto", "avg", "mean", "max")
        return width if mode in keeps else None

    def for_pooling(self, mode: str) -> Backbone:
        """The backbone whose last stage suits pooling ``mode``.

        ``"avg"`` (the default everywhere) keeps the model's own pre-logits at the
        last stage; any other mode needs the tokens or feature map before that
        pooling, so the last stage is swapped for ``unpooled_stage`` (same
        parameters, same stage names). Backbones whose last stage gives maps or
        tokens are returned as is; one whose last stage pools inside the model's
        head, with no unpooled variant, raises :class:`BackboneError`.

        Examples
        --------
        >>> from torch import nn
        >>> bb = Backbone([("a", nn.ReLU())], DataConfig(), name="tiny")
        >>> bb.for_pooling("cls") is bb
        True
        """
        if mode in ("auto", "avg") or (self.unpooled_stage is None and not self.pooled_output):
            return self
        if self.unpooled_stage is None:
            raise BackboneError(
                f"pooling={mode!r} needs the feature map or tokens of {self.name!r} before its own "
                f"pooling, but its last stage {self.stage_names[-1]!r} starts after that pooling "
                "(its head pools, then transforms). Use pooling='avg' (the model's own pre-logits), "
                f"or an earlier layer, e.g. layer={self.stage_names[-2]!r}, with pooling={mode!r}."
                if len(self.stages) > 1 else
                f"pooling={mode!r} is not available for {self.name!r}; use pooling='avg'."
            )
        stages = list(zip(self.stage_names[:-1], self.stages[:-1]))
        return Backbone(
            [*stages, (self.stage_names[-1], self.unpooled_stage)],
            self.data_config,
            name=self.name,
            classifier=self.classifier,
            modality=self.modality,
            num_prefix_tokens=self.num_prefix_tokens,
        )

    def truncated(self, stop: int) -> Backbone:
        """The first ``stop`` stages as a backbone of their own (shares parameters; no
        classifier), e.g. to key a frozen prefix by its weights only.

        Examples
        --------
        >>> from torch import nn
        >>> bb = Backbone([("a", nn.ReLU()), ("b", nn.Tanh())], DataConfig(), name="tiny")
        >>> bb.truncated(1).stage_names
        ['a']
        """
        return Backbone(
            list(zip(self.stage_names[:stop], self.stages[:stop])),
            self.data_config,
            name=self.name,
            modality=self.modality,
            num_prefix_tokens=self.num_prefix_tokens,
        )

    def replace_stage(self, index: int, module: nn.Module) -> Backbone:
        """The same backbone with stage ``index`` replaced by ``module`` (the other stages,
        and their parameters, shared)."""
        stages = list(zip(self.stage_names, self.stages))
        stages[index] = (stages[index][0], module)
        return Backbone(
            stages,
            self.data_config,
            name=self.name,
            classifier=self.classifier,
            modality=self.modality,
            num_prefix_tokens=self.num_prefix_tokens,
        )

    def forward(self, x, start: int = 0, stop: int | None = None):
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}, stages={len(self.stages)}"


class Pooling(nn.Module):
    """Reduce a backbone output to one vector per item.

    Parameters
    ----------
    mode : {"auto", "avg", "mean", "max", "token", "cls", "cls+mean", "last", "none", "flatten"}
        ``auto`` is the model's own representation: a stage output that knows
        how to pool itself (Hugging Face models: a sentence-transformers pipeline,
        CLIP's projected features, a decoder's last token) does so, and at the last
        stage of a timm or torchvision backbone it is the model's pre-logits;
        otherwise as ``avg``. ``avg``/``mean`` average a feature map (N, C, H, W)
        over space, or the patch tokens of a token output (N, T, D) (the class and
        register tokens left out; for texts, the real tokens); ``max`` takes the
        maximum instead; ``token``/``cls`` take the class token, ``last`` the last
        (real) token; ``cls+mean`` concatenates the class token and the mean (the
        DINOv2 linear-probe recipe); ``none``/``flatten`` flatten everything.
        Vectors (N, D) pass through: at the last stage of a timm or torchvision
        backbone, ``avg`` is the model's own pre-logits too.
    num_prefix_tokens : int, default=1
        Class (and register) tokens in front of the patch tokens.

    Examples
    --------
    >>> Pooling("avg")(torch.ones(2, 5, 3, 3)).shape
    torch.Size([2, 5])
    >>> Pooling("cls+mean")(torch.ones(2, 1 + 4, 8)).shape
    torch.Size([2, 16])
    """

    MODES = ("auto", "avg", "mean", "max", "token", "cls", "cls+mean", "last", "none", "flatten")

    def __init__(self, mode: str = "avg", num_prefix_tokens: int = 1):
        super().__init__()
        if mode not in self.MODES:
            raise BackboneError(f"pooling must be one of {self.MODES}, got {mode!r}.")
        self.mode = mode
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x):
        pool = getattr(x, "pool", None)
        if callable(pool):  # a stage output that knows the model's own pooling
            return pool(self.mode)
        if isinstance(x, (tuple, list)):  # text stages: (hidden, layer mask, padding mask)
            return pool_tokens(x[0], x[-1], self.mode)
        if self.mode in ("none", "flatten") or x.ndim == 2:
            return x.flatten(1)
        if x.ndim == 4:
            if self.mode in ("auto", "avg", "mean"):
                return x.mean(dim=(2, 3))
            if self.mode == "max":
                return x.amax(dim=(2, 3))
            raise BackboneError(
                f"pooling={self.mode!r} applies to token outputs (N, T, D), but this layer gives a "
                f"feature map of shape {tuple(x.shape)}. Use 'avg', 'max' or 'flatten'."
            )
        if x.ndim == 3:
            if self.mode in ("token", "cls", "cls+mean") and self.num_prefix_tokens < 1:
                raise BackboneError(
                    f"pooling={self.mode!r} needs a class token, and this backbone's tokens "
                    "have none. Use 'avg' (mean of the tokens) or 'max'."
                )
            if self.mode in ("token", "cls"):
                return x[:, 0]
            if self.mode == "last":
                return x[:, -1]
            body = x[:, self.num_prefix_tokens :] if x.shape[1] > self.num_prefix_tokens else x
            if self.mode == "cls+mean":
                return torch.cat([x[:, 0], body.mean(dim=1)], dim=1)
            return body.amax(dim=1) if self.mode == "max" else body.mean(dim=1)
        return x.flatten(1)


def pool_tokens(hidden, mask, mode: str, num_prefix_tokens: int = 0):
    """Pool token states ``hidden`` (N, T, D) into one vector per item, ignoring padding.

    Parameters
    ----------
    hidden : Tensor of shape (N, T, D)
    mask : Tensor of shape (N, T) or None
        1 for real tokens, 0 for padding; None means every token is real.
    mode : {"auto", "avg", "mean", "max", "cls", "token", "last", "cls+mean"}
        Mean (``auto``, ``avg``, ``mean``) or maximum over the real tokens (over the
        tokens after the first ``num_prefix_tokens`` when there is no mask), the
        first token, the last real token, or the first token and the mean.
    num_prefix_tokens : int, default=0

    Examples
    --------
    >>> h = torch.arange(6.0).view(1, 3, 2)
    >>> pool_tokens(h, torch.tensor([[1, 1, 0]]), "avg").tolist()
    [[1.0, 2.0]]
    >>> pool_tokens(h, torch.tensor([[1, 1, 0]]), "last").tolist()
    [[2.0, 3.0]]
    """
    if mode in ("cls", "token"):
        return hidden[:, 0]
    if mode in ("none", "flatten"):
        raise BackboneError(
            f"pooling={mode!r} would give one vector per token, and texts have different numbers of "
            "tokens; use 'auto', 'avg', 'max', 'cls' or 'last' with a text backbone."
        )
    if mask is None:
        if mode == "last":
            return hidden[:, -1]
        body = hidden[:, num_prefix_tokens:] if hidden.shape[1] > num_prefix_tokens else hidden
        pooled = body.amax(1) if mode == "max" else body.mean(1)
    elif mode == "last":  # the last position holding a real token (right or left padding)
        positions = torch.arange(mask.shape[1], device=mask.device)
        idx = (mask.to(torch.long) * (positions + 1)).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    else:
        m = mask.to(hidden.dtype).unsqueeze(-1)
        if mode == "max":
            return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return torch.cat([hidden[:, 0], pooled], dim=1) if mode == "cls+mean" else pooled


class StagedNet(nn.Module):
    """Stages ``start .. stop`` of a :class:`Backbone`, then optional pooling and head.

    The one network that extraction, fine-tuning, the frozen-prefix cache and Grad-CAM
    run. It holds the whole backbone (parameter names stay ``backbone.stages.<i>.*``)
    and runs the stages from ``start`` (where its inputs enter: 0 for images, ``k``
    for the activations after stage ``k - 1``) up to ``stop``.

    Parameters
    ----------
    backbone : Backbone
    start : int, default=0
        First stage to run; ``forward(x, start=...)`` overrides it for one call.
    stop : int or None, default=None
        Stages to run up to (exclusive); None runs them all.
    pooling : None, str or nn.Module, default=None
        A :class:`Pooling` mode or module applied after ``stop``; None returns the
        stage output as is.
    head : nn.Module or None, default=None
        Applied after pooling.
    n_frozen : int or None, default=None
        The bottom ``n_frozen`` stages are frozen: ``requires_grad=False``, run under
        ``no_grad``, and kept in eval mode when the network is put in train mode (their
        BatchNorm statistics never change); so are the backbone's parameters outside its
        stages (its pretrained classifier), which no forward uses. None leaves the
        parameters as they are and freezes nothing.
    outputs : iterable of int or None, default=None
        Cut indices: the network runs from ``start`` to the deepest cut and returns the
        activations after every cut (after stage ``c - 1`` for cut ``c``; pooled for the
        cut after the last stage when ``pooling`` is given), each flattened, side by side
        in one tensor; ``output_shapes`` then holds their shapes and
        :meth:`split_outputs` undoes the concatenation (the frozen-prefix cache).
    keep_grad : bool, default=False
        Run frozen stages with gradients too (Grad-CAM needs the gradient at a stage
        that may be frozen).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> bb = Backbone(
    ...     [("conv", nn.Conv2d(3, 8, 3)), ("bn", nn.BatchNorm2d(8))], DataConfig(), name="tiny"
    ... )
    >>> net = StagedNet(bb, pooling="avg", head=nn.Linear(8, 2), n_frozen=1).train()
    >>> net(torch.zeros(4, 3, 16, 16)).shape
    torch.Size([4, 2])
    >>> bb.stages[0].training, bb.stages[1].training
    (False, True)
    >>> acts = StagedNet(bb, stop=1)(torch.zeros(4, 3, 16, 16))
    >>> net.from_stage(1)(acts).shape, net(acts, start=1).shape
    (torch.Size([4, 2]), torch.Size([4, 2]))
    >>> cuts = StagedNet(bb, outputs=[1, 2], pooling="avg")
    >>> [tuple(a.shape) for a in cuts.split_outputs(cuts(torch.zeros(4, 3, 16, 16)))]
    [(4, 8, 14, 14), (4, 8)]
    """

    def __init__(
        self,
        backbone: Backbone,
        start: int = 0,
        stop: int | None = None,
        *,
        pooling: str | nn.Module | None = None,
        head: nn.Module | None = None,
        n_frozen: int | None = None,
        outputs=None,
        keep_grad: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        if isinstance(pooling, str):
            pooling = Pooling(pooling, backbone.num_prefix_tokens)
        self.pool = pooling
        self.head = head
        self.start = int(start)
        self.stop = None if stop is None else int(stop)
        self.outputs = None if outputs is None else sorted({int(c) for c in outputs})
        self.keep_grad = bool(keep_grad)
        self.output_shapes: list[tuple[int, ...]] = []
        self.n_frozen = 0
        if n_frozen is not None:
            self.freeze(n_frozen)

    @property
    def input_stage(self) -> int:
        """Where the inputs enter (read-only; see :meth:`from_stage`)."""
        return self.start

    def from_stage(self, start: int) -> StagedNet:
        """The same network taking its inputs at stage ``start``: a view sharing every
        module and parameter (and the freeze depth at the time of the call)."""
        view = type(self).__new__(type(self))
        nn.Module.__init__(view)
        for name, module in self._modules.items():
            setattr(view, name, module)
        for key, value in vars(self).items():
            if not key.startswith("_") and key not in self._modules:
                object.__setattr__(view, key, value)
        view.start = int(start)
        view.output_shapes = []
        return view

    def freeze(self, n_frozen: int) -> StagedNet:
        """Freeze the bottom ``n_frozen`` stages and unfreeze the others. The backbone's
        parameters outside its stages (its pretrained classifier), which the forward
        never uses, are frozen too."""
        self.n_frozen = int(n_frozen)
        in_stages = {id(p) for p in self.backbone.stages.parameters()}
        for param in self.backbone.parameters():
            if id(param) not in in_stages:
                param.requires_grad_(False)
        for i, stage in enumerate(self.backbone.stages):
            stage.requires_grad_(i >= self.n_frozen)
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for stage in self.backbone.stages[: self.n_frozen]:
            stage.eval()
        return self

    def _stop(self) -> int:
        return len(self.backbone.stages) if self.stop is None else self.stop

    def forward(self, x, start: int | None = None):
        start = self.start if start is None else int(start)
        if self.outputs is not None:
            return self._cuts(x, start)
        stop = self._stop()
        frozen_end = min(self.n_frozen, stop)
        if start < frozen_end and not self.keep_grad:
            with torch.no_grad():
                x = self.backbone(x, start, frozen_end)
            start = frozen_end
        x = self.backbone(x, start, stop)
        if self.pool is not None:
            x = self.pool(x)
        if self.head is not None:
            x = self.head(x)
        return x

    def _cuts(self, x, start: int):
        outs = []
        n_stages = len(self.backbone.stages)
        for i in range(start, self.outputs[-1]):
            x = self.backbone.stages[i](x)
            if i + 1 in self.outputs:
                last = i + 1 == n_stages and self.pool is not None
                outs.append(self.pool(x) if last else x)
        self.output_shapes = [tuple(o.shape[1:]) for o in outs]
        return torch.cat([o.flatten(1) for o in outs], 1)

    def split_outputs(self, flat):
        """The activations at each cut of ``outputs`` from one flat output row block
        (a tensor or an array), each with its own shape."""
        sizes = [math.prod(s) for s in self.output_shapes]
        offsets = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
        return [
            flat[:, a:b].reshape(len(flat), *shape)
            for a, b, shape in zip(offsets, offsets[1:], self.output_shapes)
        ]

    def extra_repr(self) -> str:
        parts = [f"start={self.start}", f"stop={self.stop}", f"n_frozen={self.n_frozen}"]
        if self.outputs is not None:
            parts.append(f"outputs={self.outputs}")
        if self.keep_grad:
            parts.append("keep_grad=True")
        return ", ".join(parts)


class _Seq(nn.Sequential):
    """A stage made of several child modules of the original network."""


def stages_from_names(model: nn.Module, groups: Sequence[tuple[str, Sequence[str]]]):
    """``(stage name, module)`` pairs, each stage the named children of ``model`` in order.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    >>> [name for name, _ in stages_from_names(net, [("a", ["0", "1"]), ("b", ["2"])])]
    ['a', 'b']
    """
    stages = []
    for stage_name, parts in groups:
        mods = [model.get_submodule(p) for p in parts]
        stages.append((stage_name, mods[0] if len(mods) == 1 else _Seq(*mods)))
    return stages


def interp_name(mode) -> str:
    """A torchvision/timm interpolation (enum or str) as a :class:`DataConfig` name.

    Examples
    --------
    >>> interp_name("bicubic"), interp_name("lanczos")
    ('bicubic', 'bilinear')
    """
    name = getattr(mode, "value", str(mode)).lower()
    return name if name in INTERPOLATIONS else "bilinear"


def offline_message(name: str, exc: Exception | str, hint: str) -> str:
    """The message of a weights download that failed (or would fail) for lack of a network."""
    what = f"{type(exc).__name__}: {exc}" if isinstance(exc, Exception) else exc
    return (
        f"Could not download the pretrained weights of {name!r} ({what}). "
        f"This machine looks offline. {hint} Or use the bundled offline backbone "
        "'efficientnet_lite0', pass pretrained=False, or a local checkpoint "
        "(BackboneSpec(arch=..., weights='file.pth'))."
    )


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds.

    A cheap probe made before a download, so that an offline machine fails at
    once instead of after the hub client's retries.

    Examples
    --------
    >>> host_reachable("localhost", port=1, timeout=0.5)
    False
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_reproduces(backbone: Backbone, module: nn.Module, source: str) -> None:
    """Refuse a stage split that does not give the module's own output.

    Runs ``module`` and ``backbone``'s stages, in eval mode, on one example
    input and raises :class:`~sktransfer.exceptions.BackboneError` when the
    shapes or the values differ (a split that skips a class token or a
    position embedding, say).
    """
    x = torch.randn(
        2, backbone.data_config.in_chans, backbone.data_config.input_size,
        backbone.data_config.input_size, generator=torch.Generator().manual_seed(0),
    )
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want = module(x)
            got = backbone(x)
    except Exception as exc:  # noqa: BLE001 - any failure means the stages do not compose
        raise BackboneError(
            f"The stages {backbone.stage_names} of {source} do not run in sequence on a "
            f"{tuple(x.shape)} input ({type(exc).__name__}: {exc})."
        ) from exc
    finally:
        module.train(was_training)
    if not (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor)):
        return  # tuples/dicts (text models) are checked by their own adapter
    same = want.shape == got.shape and torch.allclose(want, got, rtol=1e-4, atol=1e-5)
    if not same:
        raise BackboneError(
            f"The stages {backbone.stage_names} of {source}, run in order, give "
            f"{tuple(got.shape)} where the module's own forward gives {tuple(want.shape)}"
            + ("" if want.shape != got.shape else " with other values")
            + ": its forward does more than call these children in sequence (a class token, "
            "a position embedding, a reshape...). Omit stages= to use the whole module as one "
            "stage, list children that reproduce its forward, or for a timm/torchvision model "
            "pass its name ('timm/<name>', 'torchvision/<name>'), which splits it by the "
            "library's own mechanisms."
        )
