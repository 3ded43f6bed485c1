"""Tiny random-weight Hugging Face models, built offline and saved with ``save_pretrained``.

Each builder writes a model folder (weights, config, tokenizer or image processor) that
``transformers`` loads with ``from_pretrained`` exactly as it would a hub download. The
tokenizer is a WordPiece vocabulary trained on a few sentences with the ``tokenizers``
library; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

SENTENCES = [
    "a wonderful moving film", "great acting and a clever story", "i loved every minute",
    "a dull boring mess", "terrible script and awful acting", "i hated every minute",
    "a photo of a cat", "a photo of a dog", "the quick brown fox jumps over the lazy dog",
]  # fmt: skip

HIDDEN = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def _tokenizer(kind: str):
    """A fast tokenizer trained on SENTENCES: BERT-style ([CLS] x [SEP]), RoBERTa-style
    (<s> x </s>), GPT-style (no specials added, eos at hand) or CLIP-style (bos x eos)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {
        "bert": dict(unk="[UNK]", pad="[PAD]", cls="[CLS]", sep="[SEP]", mask="[MASK]"),
        "roberta": dict(unk="<unk>", pad="<pad>", cls="<s>", sep="</s>", mask="<mask>"),
        "gpt": dict(unk="<unk>", eos="<|endoftext|>"),
        "clip": dict(unk="<unk>", pad="<pad>", bos="<|startoftext|>", eos="<|endoftext|>"),
    }[kind]
    # the pad token first, so that its id is 0 (the default pad_token_id of the configs)
    order = [specials[k] for k in ("pad", "unk", "cls", "sep", "mask", "bos", "eos") if k in specials]
    tok = Tokenizer(models.WordPiece(unk_token=specials["unk"]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=120, special_tokens=order))
    if kind in ("bert", "roberta"):
        cls, sep = specials["cls"], specials["sep"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))]
        )
    elif kind == "clip":
        bos, eos = specials["bos"], specials["eos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))]
        )
    names = {"unk": "unk_token", "pad": "pad_token", "cls": "cls_token", "sep": "sep_token",
             "mask": "mask_token", "bos": "bos_token", "eos": "eos_token"}  # fmt: skip
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=64, **{names[k]: v for k, v in specials.items()}
    )
    return fast


def _save(model, folder: Path, *processors) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for p in processors:
        p.save_pretrained(folder)
    return folder


def build_text(kind: str, root: Path) -> Path:
    """A folder holding a tiny ``bert``, ``distilbert``, ``roberta`` or ``gpt2`` model."""
    import transformers as tf

    torch.manual_seed(0)
    tok = _tokenizer({"bert": "bert", "distilbert": "bert", "roberta": "roberta", "gpt2": "gpt"}[kind])
    vocab = len(tok)
    if kind == "bert":
        config = tf.BertConfig(vocab_size=vocab, max_position_embeddings=64, pad_token_id=tok.pad_token_id, **HIDDEN)
    elif kind == "distilbert":
        config = tf.DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    elif kind == "roberta":
        config = tf.RobertaConfig(
            vocab_size=vocab, max_position_embeddings=70, pad_token_id=tok.pad_token_id, **HIDDEN
        )
    else:
        eos = tok.eos_token_id
        config = tf.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_inner=37, n_positions=64,
            bos_token_id=eos, eos_token_id=eos,
        )  # fmt: skip
    return _save(tf.AutoModel.from_config(config), root / kind, tok)


def _image_processor(kind: str, size: int):
    import transformers as tf

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    if kind == "crop":  # resize the shorter side, then crop (CLIP, DINOv2)
        return tf.CLIPImageProcessor(
            size={"shortest_edge": size + 4}, crop_size={"height": size, "width": size},
            image_mean=mean, image_std=std, resample=3, do_convert_rgb=True,
        )  # fmt: skip
    return tf.ViTImageProcessor(size={"height": size, "width": size}, image_mean=mean, image_std=std, resample=2)


def build_vision(kind: str, root: Path) -> Path:
    """A folder holding a tiny ``vit`` or ``dinov2`` model with its image processor."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "vit":
        config = tf.ViTConfig(image_size=32, patch_size=8, **HIDDEN)
        proc = _image_processor("resize", 32)
    else:
        config = tf.Dinov2Config(image_size=32, patch_size=8, **{**HIDDEN, "intermediate_size": 37})
        proc = _image_processor("crop", 32)
    return _save(tf.AutoModel.from_config(config), root / kind, proc)


def build_dual(kind: str, root: Path) -> Path:
    """A folder holding a tiny ``clip`` or ``siglip`` model (both towers) with its
    tokenizer and image processor."""
    import transformers as tf

    torch.manual_seed(0)
    tok = _tokenizer("clip")
    text = dict(vocab_size=len(tok), max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **HIDDEN)  # fmt: skip
    vision = dict(image_size=32, patch_size=8, **HIDDEN)
    if kind == "clip":
        config = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
        model = tf.CLIPModel(config)
        proc = _image_processor("crop", 32)
    else:
        config = tf.SiglipConfig(text_config=text, vision_config=vision)
        model = tf.SiglipModel(config)
        proc = _image_processor("resize", 32)
    return _save(model.eval(), root / kind, tok, proc)


def build_sentence_transformer(root: Path) -> Path:
    """A sentence-transformers folder (modules.json: Transformer, Pooling, Normalize)
    around the tiny BERT, with CLS pooling (not the mean) so that the pooling mode is
    read from its config rather than assumed."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import models

    bert = build_text("bert", root / "st_base")
    word = models.Transformer(str(bert), max_seq_length=20)
    pool = models.Pooling(HIDDEN["hidden_size"], pooling_mode="cls")
    st = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
    st.save(str(root / "st"))
    return root / "st"
