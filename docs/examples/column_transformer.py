"""Text, image and numeric columns in one scikit-learn Pipeline (a constructed demo).

Each row is one ants/bees photo of the PyTorch transfer-learning tutorial (expected in
../shared/data/hymenoptera beside the repository, or in $SKTRANSFER_DATA/hymenoptera) with

* ``photo``: the image path (real);
* ``note``: a short field note, **synthetic**: made up from templates, it names a cue of
  the right insect for about 70% of the rows and a cue of the other one or nothing
  for the rest, so the text alone cannot be right much more often than that;
* ``width``, ``height``, ``kb``: the photo's pixel size and file size (real metadata,
  nearly uninformative).

A ``ColumnTransformer`` sends the note to the text backbone (all-MiniLM-L6-v2, offline),
the path to the image backbone (EfficientNet-Lite0), the numbers to ``StandardScaler``,
and a ``LogisticRegression`` learns from the concatenation. Trained on the train folder,
scored on the val folder::

    python docs/examples/column_transformer.py [PER_CLASS]

``PER_CLASS`` (optional) takes that many photos of each class from each folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor, load_image_folder

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("SKTRANSFER_DATA", REPO.parent / "shared" / "data")) / "hymenoptera"

CUES = {
    "ants": ["a long trail of them crossing the path", "carrying crumbs back to the nest",
             "found under a rock near the anthill", "marching along the kitchen floor"],
    "bees": ["buzzing around the lavender", "pollen baskets full on its hind legs",
             "hovering over the clover patch", "seen near the hive entrance"],
}  # fmt: skip
NEUTRAL = ["photo taken in the afternoon", "picture from the garden", "close-up shot, a bit blurry"]
CUE_RATE = 0.7


def field_note(label: str, rng: np.random.Generator) -> str:
    """A made-up note: a cue of ``label`` with probability CUE_RATE, else a wrong cue or none."""
    other = "bees" if label == "ants" else "ants"
    u = rng.random()
    if u < CUE_RATE:
        cue = rng.choice(CUES[label])
    elif u < CUE_RATE + (1 - CUE_RATE) / 2:
        cue = rng.choice(CUES[other])
    else:
        cue = rng.choice(NEUTRAL)
    return f"{rng.choice(['Spotted', 'Seen', 'Noted'])}: {cue}."


def make_table(folder: Path, per_class: int | None, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per photo of ``folder`` (the columns above) and the class names as labels."""
    data = load_image_folder(folder)
    idx = np.arange(len(data.target))
    if per_class is not None:
        idx = np.concatenate(
            [np.flatnonzero(data.target == c)[:per_class] for c in np.unique(data.target)]
        )
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.target_names)[data.target[idx]]
    rows = []
    for path, label in zip(data.data[idx], labels):
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
        kb = os.path.getsize(path) / 1024
        rows.append(
            {
                "photo": path,
                "note": field_note(label, rng),
                "width": width,
                "height": height,
                "kb": kb,
            }
        )
    return pd.DataFrame(rows), labels


def build_pipeline():
    columns = ColumnTransformer([
        ("text", PretrainedFeatureExtractor("all-MiniLM-L6-v2"), "note"),
        ("image", PretrainedFeatureExtractor(), "photo"),
        ("numbers", StandardScaler(), ["width", "height", "kb"]),
    ])  # fmt: skip
    return make_pipeline(columns, LogisticRegression(max_iter=2000))


def main(per_class: int | None = None) -> dict:
    X_train, y_train = make_table(DATA / "train", per_class, seed=0)
    X_val, y_val = make_table(DATA / "val", per_class, seed=1)
    pipe = build_pipeline().fit(X_train, y_train)
    accuracy = pipe.score(X_val, y_val)
    n_features = len(pipe[0].get_feature_names_out())
    print(f"{len(X_train)} training rows, {len(X_val)} validation rows, {n_features} features "
          "(384 text + 1280 image + 3 numeric)")  # fmt: skip
    shown = X_val.head(3).assign(
        photo=[Path(p).name for p in X_val["photo"][:3]], kb=X_val["kb"][:3].round(1)
    )
    print(shown.to_string())
    cued = np.mean([any(c in note for c in CUES[lab]) for note, lab in zip(X_val["note"], y_val)])
    print(f"validation notes that name a cue of the right insect: {cued:.2f}")
    print(f"validation accuracy, text + image + numbers: {accuracy:.3f}")
    return {"accuracy": accuracy, "n_features": n_features, "cued": cued, "pipeline": pipe}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
