"""Candidate default recipes for FineTuneClassifier, against the frozen-feature probe.

Run from the repository root::

    .venv/bin/python benchmarks/recipe_candidates.py [--seeds 0,1,2]
        [--recipes "default,unfreeze=1 (old default)"] [--datasets hymenoptera,digits]
        [--out benchmarks/results/recipe_candidates.json]

Hymenoptera (the 244 training photos, scored on the 153 validation photos) and
``load_digits`` (stratified 75/25 split, ``random_state=0``, as ``strategies.py``): the
probe (``PretrainedFeatureExtractor(precision="fp32")`` + ``LogisticRegression``), the
current defaults, and the candidates below, each over the seeds. The frozen activations
come from one activation cache (``memory=``; exact), so the fit times are not fit costs.
Prints mean accuracies and writes every run with the git commit and the machine.
``--recipes`` / ``--datasets`` rerun only some of them: the runs of the others stay in
the output file, each run with the commit that made it. ``"default"`` is
``FineTuneClassifier()``'s defaults at that commit (``unfreeze="auto"`` from 2026-12:
its runs record the depth chosen and the trials' validation losses).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common  # noqa: E402
from targets import hymenoptera_split  # noqa: E402

CANDIDATES = {
    "default": {},
    "unfreeze=1 (old default)": {"unfreeze": 1},
    "validation_split=None": {"validation_split": None},
    "validation_split=None, unfreeze=2": {"validation_split": None, "unfreeze": 2},
}


def datasets():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    (Xtr, ytr), (Xva, yva) = hymenoptera_split("train"), hymenoptera_split("val")
    d = load_digits()
    dtr, dva, dytr, dyva = train_test_split(
        d.images, d.target, test_size=0.25, stratify=d.target, random_state=0
    )
    return {"hymenoptera": (Xtr, ytr, Xva, yva), "digits": (dtr, dytr, dva, dyva)}


def main(argv=None) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--recipes", default=",".join(CANDIDATES), help="comma-separated names")
    ap.add_argument("--datasets", default="hymenoptera,digits")
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "recipe_candidates.json")
    )
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = {name: CANDIDATES[name] for name in args.recipes.split(",")}
    wanted = args.datasets.split(",")
    commit = _common.git_commit()
    rows = []
    with tempfile.TemporaryDirectory() as memory:
        for name, (Xtr, ytr, Xva, yva) in datasets().items():
            if name not in wanted:
                continue
            probe = make_pipeline(
                PretrainedFeatureExtractor(precision="fp32", verbose=0),
                LogisticRegression(max_iter=1000),
            ).fit(Xtr, ytr)
            rows.append({"dataset": name, "recipe": "probe", "seed": None, "commit": commit,
                         "accuracy": float(probe.score(Xva, yva))})  # fmt: skip
            print(f"{name:12s} probe {rows[-1]['accuracy']:.4f}", flush=True)
            for label, params in recipes.items():
                for seed in seeds:
                    t0 = time.perf_counter()
                    clf = FineTuneClassifier(random_state=seed, verbose=0, memory=memory, **params)
                    acc = float(clf.fit(Xtr, ytr).score(Xva, yva))
                    rows.append({"dataset": name, "recipe": label, "seed": seed, "accuracy": acc,
                                 "fit_s": time.perf_counter() - t0, "commit": commit,
                                 "unfreeze_": clf.unfreeze_,
                                 "unfreeze_scores_": clf.unfreeze_scores_})  # fmt: skip
                    print(f"{name:12s} {label:36s} seed {seed} {acc:.4f} "
                          f"unfreeze_={clf.unfreeze_} {clf.unfreeze_scores_}", flush=True)  # fmt: skip
    out = Path(args.out)
    if out.exists():  # keep the runs of the recipes and datasets not rerun
        rerun = {(r["dataset"], r["recipe"]) for r in rows}
        kept = [r for r in json.loads(out.read_text())["runs"]
                if (r["dataset"], r["recipe"]) not in rerun]  # fmt: skip
        rows = kept + rows
    rows.sort(key=lambda r: (r["dataset"] != "hymenoptera", r["recipe"] != "probe"))
    summary = []
    for name, label in dict.fromkeys((r["dataset"], r["recipe"]) for r in rows):
        accs = [r["accuracy"] for r in rows if r["dataset"] == name and r["recipe"] == label]
        summary.append({"dataset": name, "recipe": label, "mean": float(np.mean(accs)),
                        "per_seed": accs})  # fmt: skip
    print()
    print(
        _common.format_table(
            [[s["dataset"], s["recipe"], f"{s['mean']:.3f}",
              ", ".join(f"{a:.3f}" for a in s["per_seed"])] for s in summary],  # fmt: skip
            ["dataset", "recipe", "mean acc", "per seed"],
        )
    )
    result = {"summary": summary, "runs": rows, "seeds": seeds,
              "commit": commit, "machine": _common.machine_info()}  # fmt: skip
    _common.save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
