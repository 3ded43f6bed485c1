"""Does test-time augmentation help? Hymenoptera, the default FineTuneClassifier.

Run from the repository root::

    .venv/bin/python benchmarks/tta.py [--seeds 0,1,2] [--out benchmarks/results/tta.json]

For each seed: one default ``FineTuneClassifier(random_state=seed)`` is fitted on the
hymenoptera training set (245 photos), then the 153 validation photos are predicted with
``tta="none"``, ``"flip"`` and ``"flip+crops"`` (the same fitted model: ``set_params``
changes only prediction). Prints accuracy and prediction time per mode; writes the
results with the git commit and the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common  # noqa: E402

MODES = ("none", "flip", "flip+crops")


def split(name: str):
    paths = sorted(str(p) for p in (_common.HYMENOPTERA / name).glob("*/*.jpg"))
    return paths, np.array([Path(p).parent.name for p in paths])


def main(argv=None) -> dict:
    from sktransfer import FineTuneClassifier

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tta.json"))
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    (Xtr, ytr), (Xva, yva) = split("train"), split("val")
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        clf = FineTuneClassifier(random_state=seed, verbose=0).fit(Xtr, ytr)
        row = {"seed": seed, "fit_s": time.perf_counter() - t0}
        for mode in MODES:
            clf.set_params(tta=mode)
            t0 = time.perf_counter()
            acc = float(clf.score(Xva, yva))
            row[mode] = {"accuracy": acc, "predict_s": time.perf_counter() - t0}
            print(f"seed {seed} tta={mode:10s} accuracy {acc:.3f} ({row[mode]['predict_s']:.1f} s)")
        runs.append(row)
    summary = {
        mode: {
            "mean_accuracy": float(np.mean([r[mode]["accuracy"] for r in runs])),
            "per_seed": [r[mode]["accuracy"] for r in runs],
            "mean_predict_s": float(np.mean([r[mode]["predict_s"] for r in runs])),
        }
        for mode in MODES
    }
    table = [[m, s["mean_accuracy"], ", ".join(f"{a:.3f}" for a in s["per_seed"]), s["mean_predict_s"]]
             for m, s in summary.items()]  # fmt: skip
    print(_common.format_table(table, ["tta", "mean val accuracy", "per seed", "predict s"]))
    result = {
        "benchmark": "tta",
        "data": "hymenoptera: train (245) to fit, val (153) to score",
        "estimator": "FineTuneClassifier(random_state=seed) with the library's defaults",
        "machine": _common.machine_info(),
        "runs": runs,
        "summary": summary,
    }
    _common.save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
