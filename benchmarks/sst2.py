"""SST-2 (binary sentence sentiment) with the offline all-MiniLM-L6-v2 text backbone.

Run from the repository root::

    .venv/bin/python benchmarks/sst2.py [--quick] [--skip-finetune] [--budget-min 25]
        [--out benchmarks/results/sst2.json]

Two recipes, trained on all of ``train.tsv`` (6,920 sentences) and scored on
``dev.tsv`` (872), the acceptance split; ``test.tsv`` (1,821) is scored too, as
a split nothing was chosen on:

(a) ``PretrainedFeatureExtractor("all-MiniLM-L6-v2")`` (default pooling: the
    sentence-transformers pipeline, mean pooling then L2 normalization) +
    ``LogisticRegression``, with ``C`` chosen by 5-fold cross-validation on the
    training features only;
(b) ``FineTuneClassifier("all-MiniLM-L6-v2", unfreeze=...)``: the top layers
    fine-tune with the head; early stopping on a stratified 10% validation
    split carved from train (never on dev). Training stops at the first batch
    after ``--budget-min`` minutes (the best completed epoch is restored), so
    the run ends on a busy CPU too; the JSON says whether the budget cut it.

The data folder is ``$SKTRANSFER_DATA/text/sst2`` (default ``/work/shared/data``).
Results go to ``benchmarks/results/sst2.json`` (rewritten after each recipe; a recipe
skipped in this run keeps its numbers from the file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402
from skorch.callbacks import Callback  # noqa: E402

TEXT = "all-MiniLM-L6-v2"
SST2 = _common.DATA / "text" / "sst2"
LOGREG_CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
# Chosen before looking at dev, from the usual BERT fine-tuning recipe (AdamW, backbone
# lr 2e-5..1e-4, batch 32, 2-4 epochs); the top 3 of 6 layers keep a CPU run affordable.
FINETUNE_PARAMS = {
    "unfreeze": 3,
    "lr": 1e-3,
    "backbone_lr_scale": 0.05,
    "weight_decay": 0.01,
    "batch_size": 32,
    "max_epochs": 3,
    "warmup_epochs": 0,
    "validation_split": 0.1,
    "early_stopping": 1,
    "random_state": 0,
}


def load_split(name: str, folder: Path = SST2) -> tuple[list[str], np.ndarray]:
    """Sentences and 0/1 labels of ``{name}.tsv`` (lines ``label<TAB>sentence``)."""
    texts, labels = [], []
    with open(folder / f"{name}.tsv", encoding="utf-8") as f:
        for line in f:
            label, text = line.rstrip("\n").split("\t", 1)
            labels.append(int(label))
            texts.append(text)
    return texts, np.asarray(labels)


class TimeBudget(Callback):
    """Stop training at the first batch after ``minutes`` (skorch ends a fit cleanly on
    KeyboardInterrupt and still runs ``on_train_end``, so early stopping restores the
    best completed epoch)."""

    def __init__(self, minutes: float | None = None):
        self.minutes = minutes

    def on_train_begin(self, net, **kwargs):
        self.start_ = time.perf_counter()
        self.stopped_ = False

    def on_batch_end(self, net, **kwargs):
        if self.minutes is not None and time.perf_counter() - self.start_ > 60 * self.minutes:
            self.stopped_ = True
            raise KeyboardInterrupt


def run_extractor(train, dev, test, log) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    from sktransfer import PretrainedFeatureExtractor

    t0 = time.perf_counter()
    ext = PretrainedFeatureExtractor(TEXT).fit(train[0])
    F_train = ext.transform(train[0])
    t_extract = time.perf_counter() - t0
    log(f"  extracted {len(F_train)} train sentences in {t_extract:.0f} s")
    F_dev, F_test = ext.transform(dev[0]), ext.transform(test[0])
    t1 = time.perf_counter()
    search = GridSearchCV(LogisticRegression(max_iter=5000), {"C": list(LOGREG_CS)}, cv=5)
    search.fit(F_train, train[1])
    t_fit = time.perf_counter() - t1
    # the untuned default C=1 too, so the result does not rest on the C choice alone
    default_c = LogisticRegression(max_iter=5000).fit(F_train, train[1])
    return {
        "recipe": "PretrainedFeatureExtractor + LogisticRegression",
        "params": {
            "backbone": TEXT,
            "pooling": ext.pooling,
            "batch_size": "auto",
            "precision": ext.precision_,
            "logreg_C_grid": list(LOGREG_CS),
            "logreg_C_chosen_by_5fold_cv_on_train": search.best_params_["C"],
            "cv_accuracy": float(search.best_score_),
        },
        "dev_accuracy": float(search.score(F_dev, dev[1])),
        "test_accuracy": float(search.score(F_test, test[1])),
        "dev_accuracy_default_C": float(default_c.score(F_dev, dev[1])),
        "feature_norm_mean": float(np.linalg.norm(F_train, axis=1).mean()),
        "train_extract_s": t_extract,
        "train_sentences_per_s": len(F_train) / t_extract,
        "logreg_search_s": t_fit,
        "total_s": time.perf_counter() - t0,
    }


def run_finetune(train, dev, test, budget_min: float | None, log, verbose: int = 1) -> dict:
    from sktransfer import FineTuneClassifier

    budget = TimeBudget(budget_min)
    clf = FineTuneClassifier(TEXT, callbacks=[budget], verbose=verbose, **FINETUNE_PARAMS)
    t0 = time.perf_counter()
    clf.fit(train[0], train[1])
    t_fit = time.perf_counter() - t0
    # skorch may hold its own copy of a callback: read the flag from the net's list
    stopped = any(getattr(cb, "stopped_", False) for _, cb in clf.net_.callbacks_)
    log(f"  fine-tuned in {t_fit / 60:.1f} min (budget stop: {stopped})")
    hist = clf.history_
    epochs = [
        {k: row.get(k) for k in ("epoch", "train_loss", "valid_loss", "valid_acc", "dur")}
        for row in hist
    ]
    t1 = time.perf_counter()
    dev_acc = float(clf.score(dev[0], dev[1]))
    t_predict = time.perf_counter() - t1
    return {
        "recipe": "FineTuneClassifier",
        "params": {"backbone": TEXT, **FINETUNE_PARAMS, "budget_min": budget_min},
        "dev_accuracy": dev_acc,
        "test_accuracy": float(clf.score(test[0], test[1])),
        "fit_s": t_fit,
        "stopped_by_budget": stopped,
        "epochs_completed": sum(1 for e in epochs if e["valid_loss"] is not None),
        "batches_trained": sum(
            len([b for b in row["batches"] if "train_loss" in b]) for row in hist
        ),
        "history": epochs,
        "dev_predict_sentences_per_s": len(dev[0]) / t_predict,
        "precision": clf.net_.amp_dtype,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="300 train sentences, 100 dev/test")
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--skip-extractor", action="store_true")
    p.add_argument("--budget-min", type=float, default=25.0, help="fine-tuning time cap")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not SST2.is_dir():
        raise SystemExit(f"No SST-2 data at {SST2}; see /work/shared/data/README.md.")
    out = Path(
        args.out or Path(__file__).parent / "results" / f"sst2{'_quick' if args.quick else ''}.json"
    )

    def log(msg):
        print(msg, flush=True)

    train, dev, test = (load_split(s) for s in ("train", "dev", "test"))
    if args.quick:
        train, dev, test = (
            (x[:n], y[:n]) for (x, y), n in zip((train, dev, test), (300, 100, 100))
        )
    result = {
        "benchmark": "sst2",
        "data": str(SST2),
        "sizes": {"train": len(train[0]), "dev": len(dev[0]), "test": len(test[0])},
        "targets": {"extractor_dev": 0.80, "finetune_dev": 0.85},
        "machine": _common.machine_info(),
        "results": {},
    }
    if not args.skip_extractor:
        log("(a) extractor + logistic regression")
        result["results"]["extractor"] = run_extractor(train, dev, test, log)
        save(result, out)
    if not args.skip_finetune:
        log(f"(b) fine-tuning, params {FINETUNE_PARAMS}, budget {args.budget_min} min")
        result["results"]["finetune"] = run_finetune(train, dev, test, args.budget_min, log)
    result["machine"]["load_avg_end"] = list(os.getloadavg())
    save(result, out)
    print_report(result)
    log(f"wrote {out}")
    return result


def save(result: dict, out: Path) -> None:
    """Write ``result``, keeping from the file the recipes this run skipped."""
    if out.is_file():
        kept = json.loads(out.read_text()).get("results", {})
        result["results"] = {**kept, **result["results"]}
    _common.save_json(result, out)


def print_report(result: dict) -> None:
    rows = []
    for key, target in (("extractor", 0.80), ("finetune", 0.85)):
        r = result["results"].get(key)
        if r is None:
            continue
        secs = r.get("total_s", r.get("fit_s"))
        rows.append([r["recipe"], r["dev_accuracy"], target, r["test_accuracy"], secs / 60])
    print()
    print(f"SST-2, {TEXT}, train {result['sizes']['train']} / dev {result['sizes']['dev']} / "
          f"test {result['sizes']['test']} sentences")  # fmt: skip
    print(_common.format_table(rows, ["recipe", "dev acc", "target", "test acc", "minutes"]))


if __name__ == "__main__":
    main()
