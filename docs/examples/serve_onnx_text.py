"""Serve a text classifier exported with ``sktransfer.export`` using onnxruntime, numpy and
the ``tokenizers`` library alone (no sktransfer, no torch, no transformers).

    python docs/examples/serve_onnx_text.py model.onnx "a wonderful film" "a dull mess"

``model.json`` (written beside ``model.onnx`` by ``export``) names the graph's inputs, the
classes and the tokenizer file (``model.tokenizer.json``, with the estimator's truncation
and padding switched on); ``encode`` below follows it, so the probabilities equal
``predict_proba``'s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

# each graph input, as the field of a tokenizers Encoding that holds it
FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def encode(texts, pre: dict, folder: Path) -> dict[str, np.ndarray]:
    """The texts as the int64 (batch, sequence) arrays the graph takes, by name."""
    tokenizer = Tokenizer.from_file(str(folder / pre["tokenizer"]))
    encodings = tokenizer.encode_batch(list(texts))  # truncated and padded as the estimator does
    return {
        name: np.array([getattr(e, FIELDS[name]) for e in encodings], dtype=np.int64)
        for name in pre["inputs"]
    }


def predict_proba(model_path, texts) -> tuple[np.ndarray, list]:
    model_path = Path(model_path)
    meta = json.loads(model_path.with_suffix(".json").read_text())
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feeds = encode(texts, meta["preprocessing"], model_path.parent)
    probabilities = session.run(None, feeds)[0]
    return probabilities, meta["outputs"][0]["classes"]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    model, texts = argv[0], argv[1:]
    probabilities, classes = predict_proba(model, texts)
    for text, row in zip(texts, probabilities):
        print(f"{classes[int(row.argmax())]} ({row.max():.3f}): {text}")


if __name__ == "__main__":
    main()
