"""timm models as backbones, split by timm's own mechanisms.

Stages follow timm's ``group_matcher`` (the grouping timm uses for layer-wise
learning-rate decay, via ``timm.models._manipulate.group_parameters``), cut by
tracing the model with timm's FX rules; the last stage ends in timm's own
pre-logits, ``model.forward_head(model.forward_features(x), pre_logits=True)``.
A model that cannot be cut is one stage computing exactly that.
"""

from __future__ import annotations

import math
import os
from urllib.parse import urlparse

import torch
from torch import nn

from .._backbone import Backbone, DataConfig, host_reachable, interp_name, offline_message
from ..exceptions import BackboneError, BackboneNotAvailableError
from . import _fx
from ._fx import mark_features

__all__ = ["build", "data_config", "is_name", "wrap"]


def is_name(name: str) -> bool:
    """Whether ``name`` (optionally with a ``.tag``) is a timm model.

    Examples
    --------
    >>> is_name("test_vit"), is_name("test_vit.r160_in1k"), is_name("no_such_net")
    (True, True, False)
    """
    import timm

    return timm.is_model(name) or timm.is_model(name.split(".")[0])


def data_config(model: nn.Module) -> DataConfig:
    """Preprocessing from the model's pretrained config (``resolve_model_data_config``).

    Examples
    --------
    >>> import timm
    >>> data_config(timm.create_model("test_vit", pretrained=False)).input_size
    160
    """
    import timm

    cfg = timm.data.resolve_model_data_config(model)
    size = int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct", 0.875) or 1.0)
    return DataConfig(
        input_size=size,
        resize_size=int(math.floor(size / crop_pct)),
        interpolation=interp_name(cfg.get("interpolation", "bicubic")),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        in_chans=int(cfg["input_size"][0]),
        crop_pct=min(crop_pct, 1.0),
    )


class _PreLogits(nn.Module):
    """timm's pre-logits: ``forward_head(forward_features(x), pre_logits=True)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_head(mark_features(self.model.forward_features(x)), pre_logits=True)


class _Features(nn.Module):
    """timm's ``forward_features``: the tokens or map before the head's pooling."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def _group_key(model: nn.Module):
    """Parameter or module path -> timm group id (``group_matcher(coarse=True)``)."""
    from timm.models._manipulate import group_parameters

    try:
        matcher = model.group_matcher(coarse=True)
        by_param = group_parameters(model, matcher, reverse=True)
    except (AttributeError, NotImplementedError, TypeError):
        return _fx.key_by_prefix(_fx.tree_groups(model))
    by_path: dict[str, int] = {}
    for pname, gid in by_param.items():
        parts = pname.split(".")
        for i in range(1, len(parts) + 1):
            p = ".".join(parts[:i])
            by_path[p] = min(by_path.get(p, gid), gid)

    def key(path):
        while path:
            if path in by_path:
                return by_path[path]
            path = path.rpartition(".")[0]
        return None

    return key


def _tracer():
    from timm.layers import DropBlock2d, DropPath
    from timm.layers import _fx as timm_fx

    return _fx.Tracer(
        # stochastic depth stays a module, so it still follows train()/eval()
        leaf_types=(*timm_fx.get_notrace_modules(), DropPath, DropBlock2d),
        autowrap_functions=tuple(f for f in timm_fx.get_notrace_functions() if callable(f)),
    )


def wrap(model: nn.Module, name: str, config: DataConfig | None = None) -> Backbone:
    """A timm model as a :class:`Backbone` whose last stage gives timm's pre-logits.

    Examples
    --------
    >>> import timm, torch
    >>> model = timm.create_model("test_vit", pretrained=False).eval()
    >>> bb = wrap(model, "timm/test_vit")
    >>> bb.stage_names[0], len(bb.stage_names) > 2
    ('stem', True)
    >>> x = torch.randn(1, 3, 160, 160)
    >>> with torch.no_grad():
    ...     torch.allclose(bb(x), model.forward_head(model.forward_features(x), pre_logits=True), atol=1e-5)
    True
    """
    model.eval()
    config = config or data_config(model)
    x = _fx.example_input(config)
    root = _PreLogits(model)

    def reference(t):
        return model.forward_head(model.forward_features(t), pre_logits=True)

    try:
        gm = _fx.trace(root, _tracer(), x)
        stages, unpooled = _fx.split(
            gm, _group_key(model), x,
            feature_node=lambda nodes: next(
                (n for n in nodes if n.op == "call_function" and n.target is _fx.mark_features), None
            ),
            nhwc=getattr(model, "output_fmt", "NCHW") == "NHWC",
            strip="model.", root=root,
        )
        if len(stages) < 2:
            raise ValueError("no cut between groups")
        out = _fx.verify(stages, unpooled, reference, x)
        split_error = None
    except Exception as exc:  # noqa: BLE001 - any tracing failure: run the model whole
        split_error = f"{type(exc).__name__}: {exc}"
        stages, unpooled = [("model", _PreLogits(model))], _Features(model)
        with torch.no_grad():
            out = reference(x)
    if getattr(model, "output_fmt", "NCHW") == "NHWC" and unpooled is not None and len(stages) == 1:
        unpooled = None  # a channels-last map would be pooled over the wrong axes
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not (isinstance(clf, nn.Linear) and out.ndim == 2 and clf.in_features == out.shape[1]):
        clf = None
    bb = _fx.assemble(
        stages, unpooled, config, name=name, classifier=clf,
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0), out=out,
    )
    bb.split_error = split_error
    return bb


def _check_download(model: nn.Module, name: str) -> None:
    """Fail at once, with the offline message, when the weights are neither cached nor reachable."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    hint = "Download it once on a connected machine into the Hugging Face cache."
    hf_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hf_id:
        from huggingface_hub import try_to_load_from_cache

        files = [cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin",
                 "open_clip_pytorch_model.bin", "open_clip_model.safetensors"]
        if any(isinstance(try_to_load_from_cache(hf_id, f), str) for f in files if f):
            return
        host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    elif url:
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
        if os.path.isfile(cached):
            return
        host, hint = urlparse(url).hostname, "Download it once on a connected machine into $TORCH_HOME."
    else:
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") and hf_id:
        raise BackboneNotAvailableError(offline_message(name, "HF_HUB_OFFLINE is set", hint))
    if host and not host_reachable(host):
        raise BackboneNotAvailableError(offline_message(name, f"cannot reach {host}", hint))


def build(name: str, pretrained: bool) -> Backbone:
    """``timm.create_model(name)`` as a :class:`Backbone`; weights loaded after the split works.

    Examples
    --------
    >>> build("test_resnet", pretrained=False).stage_names[0]
    'stem'
    """
    import timm

    if not name.startswith("hf-hub:") and not is_name(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise BackboneError(f"Unknown timm model {name!r}. Close matches: {close}.")
    try:
        model = timm.create_model(name, pretrained=False)
    except Exception as exc:  # noqa: BLE001 - hf-hub configs come over the network
        if name.startswith("hf-hub:"):
            raise BackboneNotAvailableError(offline_message(name, exc, "")) from exc
        raise
    bb = wrap(model, f"timm/{name}")  # split (and so check) before any download
    if pretrained:
        _check_download(model, name)
        try:
            weights = timm.create_model(name, pretrained=True).state_dict()
        except Exception as exc:  # noqa: BLE001 - hub/network errors come in many types
            hint = "Download it once on a connected machine into the Hugging Face cache."
            raise BackboneNotAvailableError(offline_message(name, exc, hint)) from exc
        model.load_state_dict(weights)  # in place: the stages share these parameters
    return bb
