"""Beyond single-label classification, on real photos: regression and multi-label targets.

Run from the repository root::

    .venv/bin/python benchmarks/targets.py [--tasks rotation,collage,text] [--seeds 0,1,2]
        [--out benchmarks/results/targets.json]

- ``rotation``: every hymenoptera photo (center square, 256 px) rotated by a known random
  angle in [-45, 45] degrees (seeded), the angle being the target. ``FineTuneRegressor``
  (``unfreeze`` 1 and 2, otherwise default) against ``PretrainedFeatureExtractor() +
  RidgeCV`` and against predicting the training mean: mean absolute error in degrees on
  the rotated val photos.
- ``collage``: two hymenoptera photos side by side in one 256 px square (each squeezed to
  128 x 256 from its center), labelled by which of {ant, bee} appear (a 2-column indicator
  matrix: ant+ant, bee+bee or ant+bee). Multi-label ``FineTuneClassifier`` against a
  one-vs-rest ``LogisticRegression`` probe on ``PretrainedFeatureExtractor()`` features:
  ``f1_score(average="samples")`` on collages of val photos.
- ``text``: ``FineTuneRegressor("all-MiniLM-L6-v2")`` predicting each SST-2 sentence's
  length in tokens (a mechanics check of text regression end to end) against
  ``RidgeCV`` on MiniLM features and the mean, on the dev sentences.

Prints a table per task and writes every run with the git commit and the machine.
``tests/test_targets.py`` builds its data with the same functions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common  # noqa: E402

SIDE = 256
ANT, BEE = "ants", "bees"


def hymenoptera_split(name: str) -> tuple[list[str], np.ndarray]:
    """The JPEG photos of one split (the GIF placeholder left out) and their class names."""
    paths = sorted(str(p) for p in (_common.HYMENOPTERA / name).glob("*/*.jp*g"))
    return paths, np.array([Path(p).parent.name for p in paths])


def _square(path: str, size: int = SIDE) -> Image.Image:
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return img.resize((size, size), Image.BICUBIC, box=box)


def rotated_photos(paths, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's center square at ``SIDE`` px rotated by a random angle in [-45, 45]
    degrees (counter-clockwise, bilinear, black corners): uint8 images and the angles."""
    angles = np.random.default_rng(seed).uniform(-45, 45, size=len(paths))
    images = np.stack(
        [np.asarray(_square(p).rotate(a, Image.BILINEAR)) for p, a in zip(paths, angles)]
    )
    return images, angles


def collages(paths, names, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of two photos side by side (each photo's center, squeezed to
    ``SIDE / 2`` x ``SIDE``) and their indicator targets, columns (ant, bee): a third of
    each of ant+ant, bee+bee and ant+bee (in random order, sides at random)."""
    rng = np.random.default_rng(seed)
    by_class = {c: [p for p, k in zip(paths, names) if k == c] for c in (ANT, BEE)}
    kinds = [(ANT, ANT), (BEE, BEE), (ANT, BEE)]
    images, targets = [], []
    for i in range(n):
        pair = list(kinds[i % 3])
        rng.shuffle(pair)
        halves = [
            _square(by_class[c][rng.integers(len(by_class[c]))]).resize((SIDE // 2, SIDE))
            for c in pair
        ]
        canvas = Image.new("RGB", (SIDE, SIDE))
        canvas.paste(halves[0], (0, 0))
        canvas.paste(halves[1], (SIDE // 2, 0))
        images.append(np.asarray(canvas))
        targets.append([int(ANT in pair), int(BEE in pair)])
    return np.stack(images), np.array(targets)


def sst2(name: str) -> list[str]:
    path = _common.DATA / "text" / "sst2" / f"{name}.tsv"
    return [line.split("\t", 1)[1].strip() for line in path.read_text().splitlines()]


def sentence_lengths(sentences) -> np.ndarray:
    return np.array([len(s.split()) for s in sentences], dtype=float)


def _mae(a, b) -> float:
    return float(np.mean(np.abs(np.asarray(a) - np.asarray(b))))


def _row(task: str, seed: int, model: str, metric: str, value: float, t0=None) -> dict:
    row = {"task": task, "seed": seed, "model": model, metric: float(value)}
    if t0 is not None:
        row["fit_s"] = time.perf_counter() - t0
    return row


def run_rotation(seed: int, unfreezes=(1, 2)) -> list[dict]:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline

    from sktransfer import FineTuneRegressor, PretrainedFeatureExtractor

    (ptr, _), (pva, _) = hymenoptera_split("train"), hymenoptera_split("val")
    Xtr, ytr = rotated_photos(ptr, seed)
    Xva, yva = rotated_photos(pva, seed + 1000)
    rows = [_row("rotation", seed, "mean", "mae", _mae(yva, ytr.mean()))]
    t0 = time.perf_counter()
    probe = make_pipeline(
        PretrainedFeatureExtractor(precision="fp32", verbose=0),
        RidgeCV(alphas=np.logspace(-2, 4, 13)),
    ).fit(Xtr, ytr)
    rows.append(
        _row("rotation", seed, "features + RidgeCV", "mae", _mae(yva, probe.predict(Xva)), t0)
    )
    for unfreeze in unfreezes:
        t0 = time.perf_counter()
        reg = FineTuneRegressor(unfreeze=unfreeze, random_state=seed, verbose=0).fit(Xtr, ytr)
        model = f"FineTuneRegressor(unfreeze={unfreeze})"
        rows.append(_row("rotation", seed, model, "mae", _mae(yva, reg.predict(Xva)), t0))
    return rows


def run_collage(seed: int, n_train: int = 300, n_val: int = 150, unfreezes=(1, 2)) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor

    Xtr, Ytr = collages(*hymenoptera_split("train"), n_train, seed)
    Xva, Yva = collages(*hymenoptera_split("val"), n_val, seed + 1000)
    t0 = time.perf_counter()
    probe = make_pipeline(
        PretrainedFeatureExtractor(precision="fp32", verbose=0),
        OneVsRestClassifier(LogisticRegression(max_iter=2000)),
    ).fit(Xtr, Ytr)
    f1 = f1_score(Yva, probe.predict(Xva), average="samples")
    rows = [
        _row("collage", seed, "features + one-vs-rest LogisticRegression", "f1_samples", f1, t0)
    ]
    for unfreeze in unfreezes:
        t0 = time.perf_counter()
        clf = FineTuneClassifier(unfreeze=unfreeze, random_state=seed, verbose=0).fit(Xtr, Ytr)
        f1 = f1_score(Yva, clf.predict(Xva), average="samples")
        model = f"FineTuneClassifier(unfreeze={unfreeze})"
        rows.append(_row("collage", seed, model, "f1_samples", f1, t0))
    return rows


def run_text(seed: int, n_train: int = 2000, n_dev: int = 872) -> list[dict]:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline

    from sktransfer import FineTuneRegressor, PretrainedFeatureExtractor

    Xtr, Xdev = sst2("train")[:n_train], sst2("dev")[:n_dev]
    ytr, ydev = sentence_lengths(Xtr), sentence_lengths(Xdev)
    rows = [_row("text", seed, "mean", "mae", _mae(ydev, ytr.mean()))]
    t0 = time.perf_counter()
    probe = make_pipeline(
        PretrainedFeatureExtractor("all-MiniLM-L6-v2", verbose=0),
        RidgeCV(alphas=np.logspace(-2, 4, 13)),
    ).fit(Xtr, ytr)
    rows.append(
        _row("text", seed, "MiniLM features + RidgeCV", "mae", _mae(ydev, probe.predict(Xdev)), t0)
    )
    t0 = time.perf_counter()
    reg = FineTuneRegressor("all-MiniLM-L6-v2", random_state=seed, verbose=0).fit(Xtr, ytr)
    model = "FineTuneRegressor('all-MiniLM-L6-v2')"
    rows.append(_row("text", seed, model, "mae", _mae(ydev, reg.predict(Xdev)), t0))
    return rows


RUNS = {"rotation": run_rotation, "collage": run_collage, "text": run_text}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds of each (task, model)."""
    out = []
    for task, model in dict.fromkeys((r["task"], r["model"]) for r in rows):
        same = [r for r in rows if r["task"] == task and r["model"] == model]
        metric = "mae" if "mae" in same[0] else "f1_samples"
        values = [r[metric] for r in same]
        out.append(
            {
                "task": task,
                "model": model,
                "metric": metric,
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "per_seed": values,
                "fit_s": float(np.mean([r.get("fit_s", 0.0) for r in same])),
            }
        )
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="rotation,collage,text")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--text-train", type=int, default=2000, help="SST-2 training sentences")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "targets.json"))
    args = ap.parse_args(argv)
    rows = []
    for task in args.tasks.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            kwargs = {"n_train": args.text_train} if task == "text" else {}
            for row in RUNS[task](seed, **kwargs):
                rows.append(row)
                metric = "mae" if "mae" in row else "f1_samples"
                print(f"{task:9s} seed {seed} {row['model']:45s} {metric} {row[metric]:.3f}")
    summary = summarize(rows)
    print()
    print(
        _common.format_table(
            [
                [
                    s["task"],
                    s["model"],
                    s["metric"],
                    f"{s['mean']:.3f}",
                    f"{s['std']:.3f}",
                    f"{s['fit_s']:.0f}",
                ]
                for s in summary
            ],
            ["task", "model", "metric", "mean", "std", "fit s"],
        )
    )
    result = {
        "summary": summary,
        "runs": rows,
        "seeds": args.seeds,
        "commit": _common.git_commit(),
        "machine": _common.machine_info(),
    }
    _common.save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
