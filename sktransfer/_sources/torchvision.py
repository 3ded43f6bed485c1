"""torchvision classification models as backbones, split by torchvision's FX tracing.

The model is traced (``torch.fx``, with the rules of
``torchvision.models.feature_extraction``: ``math`` and ``torchvision.ops``
wrapped), the graph ends at the input of the final classification layer (the
model's pre-logits: after DenseNet's final ReLU, after the penultimate Linear of
MobileNet V3, VGG and AlexNet, the pooled last stage elsewhere), and it is cut
between the model's declared blocks (``layer1..4``, ``features.i``, encoder
layers...). Preprocessing comes from the weights' own ``transforms()``.
"""

from __future__ import annotations

import functools
import math
import os
from urllib.parse import urlparse

import torch
from torch import nn

from .._backbone import Backbone, DataConfig, host_reachable, interp_name, offline_message
from ..exceptions import BackboneError, BackboneNotAvailableError
from . import _fx

__all__ = ["build", "is_name", "wrap"]

# Architectures whose blocks hand on channels-last maps (N, H, W, C).
_NHWC = ("SwinTransformer",)


@functools.lru_cache(maxsize=1)
def _names() -> frozenset:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def is_name(name: str) -> bool:
    """Whether ``name`` is a torchvision classification model.

    Examples
    --------
    >>> is_name("resnet18"), is_name("fasterrcnn_resnet50_fpn"), is_name("test_vit")
    (True, False, False)
    """
    return name in _names()


def data_config(weights) -> DataConfig:
    """Preprocessing from a torchvision ``Weights`` entry (its ``transforms()``).

    Examples
    --------
    >>> import torchvision
    >>> cfg = data_config(torchvision.models.ResNet18_Weights.DEFAULT)
    >>> cfg.input_size, cfg.resize_size
    (224, 256)
    """
    t = weights.transforms()
    return DataConfig(
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        interpolation=interp_name(t.interpolation),
        mean=tuple(t.mean),
        std=tuple(t.std),
    )


def _tracer():
    import torchvision

    # stochastic depth stays a module, so it still follows train()/eval()
    return _fx.Tracer(
        leaf_types=(torchvision.ops.StochasticDepth,), autowrap_modules=(math, torchvision.ops)
    )


def _classification_node(gm):
    """The last call of a module with parameters: the final classification layer."""
    modules = dict(gm.named_modules())
    calls = [
        n for n in gm.graph.nodes
        if n.op == "call_module" and any(True for _ in modules[n.target].parameters())
    ]
    if not calls:
        raise BackboneError("the traced graph calls no module with parameters")
    return calls[-1]


def wrap(model: nn.Module, name: str, config: DataConfig | None = None) -> Backbone:
    """A torchvision model as a :class:`Backbone` ending at its pre-logits.

    Examples
    --------
    >>> import torch, torchvision
    >>> model = torchvision.models.get_model("squeezenet1_1", weights=None).eval()
    >>> bb = wrap(model, "torchvision/squeezenet1_1")
    >>> bb.stage_names[:2]
    ['stem', 'features.3']
    """
    model.eval()
    config = config or DataConfig()
    x = _fx.example_input(config)
    try:
        gm = _fx.trace(model, _tracer(), x)
    except Exception as exc:  # noqa: BLE001 - tracing errors come in many types
        raise BackboneError(
            f"torchvision model {name!r} could not be traced with torch.fx ({type(exc).__name__}: "
            f"{exc}), so sktransfer cannot find its layers. Wrap it in a BackboneSpec(module=...) "
            "whose forward returns the features you want (one stage), or use a timm model."
        ) from exc
    clf_node = _classification_node(gm)
    clf = gm.get_submodule(clf_node.target)
    pre = clf_node.args[0]
    out = _fx.output_node(gm)
    out.args = (pre,)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    captured = {}
    hook = model.get_submodule(clf_node.target).register_forward_pre_hook(
        lambda m, args: captured.__setitem__("x", args[0])
    )

    def reference(t):
        model(t)
        return captured["x"]

    try:
        stages, unpooled = _fx.split(
            gm, _fx.key_by_prefix(_fx.tree_groups(model)), x,
            feature_node=lambda nodes: _fx.last_spatial_node(nodes, pre),
            nhwc=type(model).__name__ in _NHWC, root=model,
        )
        out = _fx.verify(stages, unpooled, reference, x)
    except Exception as exc:  # noqa: BLE001 - fall back to the traced graph as one stage
        stages, unpooled = [("model", gm)], None
        try:
            out = _fx.verify(stages, None, reference, x)
        except Exception:  # noqa: BLE001
            raise BackboneError(
                f"torchvision model {name!r} could not be split into stages ({exc})."
            ) from exc
    finally:
        hook.remove()
    return _fx.assemble(
        stages, unpooled, config, name=name,
        classifier=clf if isinstance(clf, nn.Linear) else None,
        num_prefix_tokens=1 if hasattr(model, "class_token") else 0, out=out,
    )


def _check_download(weights, name: str) -> None:
    url = weights.url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    if os.path.isfile(cached):
        return
    host = urlparse(url).hostname
    if host and not host_reachable(host):
        hint = "Download it once on a connected machine into $TORCH_HOME (torch hub cache)."
        raise BackboneNotAvailableError(offline_message(name, f"cannot reach {host}", hint))


def build(name: str, pretrained: bool) -> Backbone:
    """``torchvision.models.get_model(name)`` as a :class:`Backbone`.

    The split is checked on random weights before anything is downloaded.

    Examples
    --------
    >>> build("resnet18", pretrained=False).stage_names
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    import torchvision

    if not is_name(name):
        import difflib

        close = difflib.get_close_matches(name, sorted(_names()), n=5)
        raise BackboneError(f"Unknown torchvision model {name!r}. Close matches: {close}.")
    weights = torchvision.models.get_model_weights(name).DEFAULT
    config = data_config(weights)
    bb = wrap(torchvision.models.get_model(name, weights=None), f"torchvision/{name}", config)
    if not pretrained:
        return bb
    _check_download(weights, name)
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:
        hint = "Download it once on a connected machine into $TORCH_HOME (torch hub cache)."
        raise BackboneNotAvailableError(offline_message(name, exc, hint)) from exc
    return wrap(model, f"torchvision/{name}", config)
