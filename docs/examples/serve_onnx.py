"""Serve a classifier exported with ``sktransfer.export`` using onnxruntime, numpy and
Pillow alone (no sktransfer, no torch).

    python docs/examples/serve_onnx.py model.onnx photo1.jpg [photo2.jpg ...]

``model.json`` (written beside ``model.onnx`` by ``export``) gives the input name, the
classes and the preprocessing; ``preprocess`` below follows it step by step, the same
steps as the estimator, so the probabilities equal ``predict_proba``'s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageOps

FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def load_rgb(path, draft_size=None) -> Image.Image:
    """Decode to 8-bit RGB; transparent pixels over white; EXIF orientation applied."""
    with Image.open(path) as img:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))  # DCT scaling, as the estimator does
        img.load()
        img = ImageOps.exif_transpose(img) if img.getexif() else img
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")


def preprocess(path, pre: dict) -> np.ndarray:
    """One image as the float32 (3, input_size, input_size) array the model takes."""
    crop, resize, filt = pre["input_size"], pre["resize_size"], FILTERS[pre["interpolation"]]
    img = load_rgb(path, draft_size=pre.get("jpeg_draft_size"))
    if resize is None:
        img = img.resize((crop, crop), filt)
    else:
        # shorter side to `resize`, then the central crop, in one resize of the source box
        w, h = img.size
        new_w, new_h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        img = img.resize((crop, crop), filt, box=box)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return x.transpose(2, 0, 1)


def predict_proba(model_path, images) -> tuple[np.ndarray, list]:
    meta = json.loads(Path(model_path).with_suffix(".json").read_text())
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = np.stack([preprocess(p, meta["preprocessing"]) for p in images]).astype(np.float32)
    probabilities = session.run(None, {meta["inputs"][0]["name"]: x})[0]
    return probabilities, meta["outputs"][0]["classes"]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    model, images = argv[0], argv[1:]
    probabilities, classes = predict_proba(model, images)
    for path, row in zip(images, probabilities):
        print(f"{Path(path).name}: {classes[int(row.argmax())]} ({row.max():.3f})")


if __name__ == "__main__":
    main()
