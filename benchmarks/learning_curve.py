"""Pretrained versus from scratch on small data: a learning curve.

The same network, EfficientNet-Lite0, trained on growing fractions of a fixed
training set and scored on a fixed held-out set, three ways:

==================  =============================================================
feature extraction  ``PretrainedFeatureExtractor`` + ``LogisticRegression``
                    (lbfgs, C=1), the cheap baseline
pretrained          ``FineTuneClassifier(pretrained=True, unfreeze=2)``: the
                    ImageNet weights, top two stages (``blocks.6``, ``head``)
                    trained at lr 1e-3 x 0.1, a new linear head at lr 1e-3
from scratch        ``FineTuneClassifier(pretrained=False, unfreeze="all")``:
                    random weights, everything trained at lr 3e-3
==================  =============================================================

Both fine-tuning recipes use AdamW (weight decay 1e-4), batch 16, no
augmentation, ``validation_split=None``, ``early_stopping=False`` and the same
fixed number of epochs; the model of the last epoch is scored. Training from
scratch gets a higher learning rate, on every layer, because random weights
have far to go; the pretrained network keeps its low layers frozen and moves
its top slowly (on digits, ``strategies.py`` found ``unfreeze=2`` within a
point of full fine-tuning at a tenth of its CPU time).
With a fixed number of epochs a smaller training set also gets fewer updates:
that is part of what a learning curve measures here, since neither recipe looks
at held-out data to decide when to stop.

Data, with the input resolution lowered from Lite0's 224 px so that training
from scratch (the whole network, forward and backward, every epoch) fits in
about 20 minutes on a 2-core CPU:

- **digits** (scikit-learn's 8x8 drawings): one stratified half (898 images)
  is the training set, the other half (899) the test set (``random_state=0``);
  training subsets of 5, 20 and 100 %. The 8x8 images are scaled to 64 px
  (bicubic, no crop). At 32 px the pretrained features lose ground (feature
  extraction + LR on all 898: 0.871 at 32 px, 0.939 at 64 px, measured while
  choosing); 224 px would be 12x the FLOPs of 64 px, for 8x8 drawings.
- **hymenoptera** (ants vs bees photos): ``train`` (245) -> ``val`` (153);
  subsets of 20, 50 and 100 % (5 % would be 12 images). Resized to 146 px
  (shorter side, bicubic) and center-cropped to 128 px: Lite0's own
  preprocessing (:attr:`Backbone.data_config`) with 224/256 scaled to 128/146.

A subset keeps each class's share (stratified) and the subsets of one seed are
nested (5 % inside 20 % inside 100 %). Fractions below 100 % run with seeds 0
and 1 (a different subset and a different initialisation and shuffling); the
table gives the mean and the plot every run. All runs share one process;
the frozen stages of the pretrained recipes are computed once per image
(``memory=`` a temporary folder) and reused by every fraction and seed.

Usage::

    .venv/bin/python benchmarks/learning_curve.py --threads 1  # 18 min, 2 cores, load 13-15
    .venv/bin/python benchmarks/learning_curve.py --quick      # tiny subsets, 2 epochs: a smoke run
    .venv/bin/python benchmarks/learning_curve.py --datasets digits --seeds 0
    .venv/bin/python benchmarks/learning_curve.py --replot benchmarks/results/learning_curve.json

Writes ``benchmarks/results/learning_curve.json`` (settings, machine, every
run) and ``benchmarks/results/learning_curve.png`` (accuracy against the
fraction of training data, one panel per dataset, one line per method).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402
import strategies  # noqa: E402

DEFAULT_OUT = HERE / "results" / "learning_curve.json"
BACKBONE = "efficientnet_lite0"

METHODS: dict[str, dict] = {
    "feature_extraction": {
        "label": "feature extraction + LR",
        "recipe": strategies.STRATEGIES["feature_extraction"]["recipe"],
    },
    "pretrained": {
        "label": "pretrained, fine-tuned (unfreeze=2)",
        "params": {"pretrained": True, "unfreeze": 2, "lr": 1e-3, "backbone_lr_scale": 0.1},
    },
    "scratch": {
        "label": 'from scratch (unfreeze="all")',
        "params": {"pretrained": False, "unfreeze": "all", "lr": 3e-3, "backbone_lr_scale": 1.0},
    },
}
COMMON = {"batch_size": 16, "weight_decay": 1e-4, "optimizer": "adamw"}

DATASETS: dict[str, dict] = {
    "digits": {"fractions": (0.05, 0.2, 1.0), "input_size": 64, "resize_size": None},
    "hymenoptera": {"fractions": (0.2, 0.5, 1.0), "input_size": 128, "resize_size": 146},
}
EPOCHS = 10
SEEDS = (0, 1)
# --quick: the same code on tiny data (digits: 100 train / 100 test; hymenoptera:
# strategies.py's quick subset of 12 + 12 train, 8 + 8 val), 2 epochs, one seed.
QUICK = {"digits_train": 100, "digits_test": 100, "epochs": 2, "seeds": (0,)}


# --------------------------------------------------------------------------- data


def load_data(name: str, quick: bool, data_root: Path = strategies.DEFAULT_DATA):
    """``(X_train, y_train, X_test, y_test, description)``: the fixed split of ``name``."""
    if name == "hymenoptera":
        return strategies.load_dataset(name, quick, data_root)
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        sizes = (
            {"train_size": QUICK["digits_train"], "test_size": QUICK["digits_test"]}
            if quick
            else {"test_size": 0.5}
        )
        Xtr, Xte, ytr, yte = train_test_split(
            d.images, d.target, stratify=d.target, random_state=strategies.SEED, **sizes
        )
        desc = (
            f"sklearn load_digits (8x8): stratified {len(ytr)} train, {len(yte)} held-out "
            f"test (random_state={strategies.SEED})"
        )
        return Xtr, ytr, Xte, yte, desc
    raise ValueError(f"Unknown dataset {name!r}; expected one of {list(DATASETS)}.")


def nested_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified ``fraction`` of ``y``, at least one per class.

    Each class is shuffled once per ``seed`` and its first ``round(fraction * n_c)``
    images are taken, so the subsets of one seed are nested.
    """
    rng = np.random.RandomState(seed)
    idx = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        idx.append(members[: max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(idx))


def data_config(name: str):
    """Lite0's own preprocessing (from the backbone), at the dataset's lower resolution."""
    from sktransfer.backbones import load_backbone

    cfg = load_backbone(BACKBONE, pretrained=False).data_config
    ds = DATASETS[name]
    return replace(cfg, input_size=ds["input_size"], resize_size=ds["resize_size"])


# --------------------------------------------------------------------------- runs


def recipe(method: str, epochs: int) -> str:
    spec = METHODS[method]
    if "params" not in spec:
        return spec["recipe"]
    p = {**spec["params"], **COMMON}
    backbone = "all layers" if p["unfreeze"] == "all" else f"top {p['unfreeze']} stages"
    return (
        f"{'ImageNet' if p['pretrained'] else 'random'} weights, {backbone} at lr "
        f"{p['lr'] * p['backbone_lr_scale']:g}, head at lr {p['lr']:g}; {epochs} ep, "
        f"bs {p['batch_size']}, AdamW wd {p['weight_decay']:g}"
    )


def run_dataset(
    name: str,
    *,
    fractions: Sequence[float] | None = None,
    seeds: Sequence[int] = SEEDS,
    methods: Sequence[str] = tuple(METHODS),
    epochs: int = EPOCHS,
    quick: bool = False,
    data_root: Path = strategies.DEFAULT_DATA,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Every method on every fraction (seeds ``seeds`` below 100 %, seed 0 at 100 %).

    Returns one dict per run: ``dataset``, ``method``, ``label``, ``fraction``,
    ``seed``, ``n_train``, ``n_test``, ``accuracy`` (last epoch, held-out set),
    ``fit_s`` and ``fit_cpu_s`` (``fit`` wall and process CPU time) and, for
    fine-tuning, the per-epoch ``train_loss``.
    """
    from sklearn.linear_model import LogisticRegression

    from sktransfer import BackboneSpec, FineTuneClassifier, PretrainedFeatureExtractor

    Xtr, ytr, Xte, yte, _ = load_data(name, quick, data_root)
    fractions = tuple(DATASETS[name]["fractions"] if fractions is None else fractions)
    spec = BackboneSpec(arch=BACKBONE, data_config=data_config(name), name=f"{BACKBONE}@{name}")
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sktransfer-lc-") as cache_dir:
        features = None
        for method in methods:
            for fraction in fractions:
                for seed in seeds if fraction < 1 else seeds[:1]:
                    idx = nested_subset(ytr, fraction, seed)
                    start, cpu = time.perf_counter(), time.process_time()
                    row: dict = {}
                    if method == "feature_extraction":
                        if features is None:
                            # no state is learnt by the extractor: extract each image once
                            fe = PretrainedFeatureExtractor(spec, verbose=0).fit()
                            features = fe.transform(Xtr), fe.transform(Xte)
                            row["extract_s"] = time.perf_counter() - start
                        model = LogisticRegression(max_iter=2000, random_state=seed)
                        model.fit(features[0][idx], ytr[idx])
                        fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
                        accuracy = model.score(features[1], yte)
                    else:
                        model = FineTuneClassifier(
                            spec,
                            **METHODS[method]["params"],
                            **COMMON,
                            max_epochs=epochs,
                            validation_split=None,
                            early_stopping=False,
                            memory=cache_dir,
                            random_state=seed,
                            verbose=0,
                        ).fit(Xtr[idx], ytr[idx])
                        fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
                        accuracy = model.score(Xte, yte)
                        row["train_loss"] = [float(v) for v in model.history_[:, "train_loss"]]
                    results.append(
                        {
                            "dataset": name,
                            "method": method,
                            "label": METHODS[method]["label"],
                            "fraction": float(fraction),
                            "seed": int(seed),
                            "n_train": int(len(idx)),
                            "n_test": int(len(yte)),
                            "accuracy": float(accuracy),
                            "fit_s": fit_s,
                            "fit_cpu_s": fit_cpu_s,
                            **row,
                        }
                    )
                    log(
                        f"{name:12s} {method:18s} {fraction:5.0%} seed {seed}: "
                        f"n={len(idx):4d} acc {accuracy:.3f}, fit {fit_s:.1f} s"
                    )
    return results


def summarize(results: list[dict]) -> list[dict]:
    """One row per (dataset, method, fraction): mean, min and max accuracy over the seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["method"], r["fraction"]), []).append(r)
    rows = []
    for (ds, method, fraction), runs in groups.items():
        accs = [r["accuracy"] for r in runs]
        rows.append(
            {
                "dataset": ds,
                "method": method,
                "label": METHODS[method]["label"],
                "fraction": fraction,
                "n_train": runs[0]["n_train"],
                "n_test": runs[0]["n_test"],
                "seeds": [r["seed"] for r in runs],
                "accuracy": float(np.mean(accs)),
                "accuracy_min": float(min(accs)),
                "accuracy_max": float(max(accs)),
                "fit_s": float(np.mean([r["fit_s"] for r in runs])),
            }
        )
    return rows


# --------------------------------------------------------------------------- report


def format_table(summary: list[dict]) -> str:
    """Accuracy by dataset and fraction, one column per method (mean over seeds)."""
    methods = list(dict.fromkeys(r["method"] for r in summary))
    by_key = {(r["dataset"], r["fraction"], r["method"]): r for r in summary}
    header = ["dataset", "fraction", "n train", *[METHODS[m]["label"] for m in methods]]
    rows = []
    for ds, fraction in dict.fromkeys((r["dataset"], r["fraction"]) for r in summary):
        cells = []
        for m in methods:
            r = by_key.get((ds, fraction, m))
            if r is None:
                cells.append(None)
            elif len(r["seeds"]) > 1:
                cells.append(
                    f"{r['accuracy']:.3f} ({r['accuracy_min']:.3f}-{r['accuracy_max']:.3f})"
                )
            else:
                cells.append(f"{r['accuracy']:.3f}")
        n = next(
            by_key[(ds, fraction, m)]["n_train"] for m in methods if (ds, fraction, m) in by_key
        )
        rows.append([ds, f"{fraction:.0%}", n, *cells])
    return _common.format_table(rows, header)


def plot(summary: list[dict], results: list[dict], path: Path, title_note: str) -> None:
    """Accuracy against the fraction of training data (log x), one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        rows = [r for r in summary if r["dataset"] == ds]
        for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            line = sorted((r for r in rows if r["method"] == method), key=lambda r: r["fraction"])
            xs = [r["fraction"] for r in line]
            ax.plot(xs, [r["accuracy"] for r in line], "-o", color=f"C{i}", label=line[0]["label"])
            runs = [r for r in results if r["dataset"] == ds and r["method"] == method]
            ax.scatter(
                [r["fraction"] for r in runs],
                [r["accuracy"] for r in runs],
                s=14,
                color=f"C{i}",
                alpha=0.45,
                zorder=3,
            )
        n_classes = 10 if ds == "digits" else 2
        ax.axhline(1 / n_classes, color="grey", ls=":", lw=0.8)
        ax.annotate("chance", (0, 1 / n_classes), xycoords=("axes fraction", "data"),
                    xytext=(4, 3), textcoords="offset points", fontsize=7,
                    color="grey")  # fmt: skip
        fractions = sorted({r["fraction"] for r in rows})
        n_train = {r["fraction"]: r["n_train"] for r in rows}
        ax.set_xscale("log")
        ax.set_xticks(fractions)
        ax.set_xticklabels([f"{f:.0%}\n({n_train[f]})" for f in fractions])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("fraction of the training set (images)")
        ax.set_ylabel("held-out accuracy (last epoch)")
        ax.set_title(f"{ds}: {rows[0]['n_test']} held-out images", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "EfficientNet-Lite0, pretrained vs from scratch: lines = mean over seeds, dots = runs\n"
        + title_note,
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_note(info: dict, settings: dict) -> str:
    sizes = ", ".join(f"{ds} {px} px" for ds, px in settings["input_size"].items())
    return (
        f"{settings['epochs']} epochs, {sizes}; {info['cpu_model']}, "
        f"{info['cpu_affinity']} cores, torch {info['torch']}"
    )


def replot(json_path: Path) -> int:
    """Print the table and redraw the PNG from a saved JSON, without training."""
    report = json.loads(json_path.read_text())
    print(format_table(report["summary"]))
    png = json_path.with_suffix(".png")
    plot(
        report["summary"], report["results"], png, _plot_note(report["machine"], report["settings"])
    )
    print(f"\nwrote {png}")
    return 0


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets, 2 epochs, one seed")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0,1; quick: 0)")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS}; quick: 2")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's own). On a CPU shared with other "
        "jobs, 1 can be many times faster than 2 (threads that wait for each other)",
    )
    parser.add_argument("--data-root", type=Path, default=strategies.DEFAULT_DATA)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON path (default {DEFAULT_OUT}, or a temporary folder with --quick; "
        "the PNG goes next to it)",
    )
    parser.add_argument("--replot", type=Path, default=None, metavar="JSON",
                        help="print the table and redraw the plot of a saved run; train nothing")  # fmt: skip
    args = parser.parse_args(argv)
    if args.replot is not None:
        return replot(args.replot)

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for given, known in ((datasets, DATASETS), (methods, METHODS)):
        if unknown := [x for x in given if x not in known]:
            parser.error(f"unknown {unknown}; known: {list(known)}")
    seeds = (
        tuple(int(s) for s in args.seeds.split(","))
        if args.seeds
        else (QUICK["seeds"] if args.quick else SEEDS)
    )
    epochs = args.epochs or (QUICK["epochs"] if args.quick else EPOCHS)
    quick_out = Path(tempfile.gettempdir()) / "sktransfer-benchmarks" / "learning_curve_quick.json"
    out = args.out or (quick_out if args.quick else DEFAULT_OUT)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = _common.machine_info()
    started = time.perf_counter()
    results: list[dict] = []
    for ds in datasets:
        results += run_dataset(
            ds,
            seeds=seeds,
            methods=methods,
            epochs=epochs,
            quick=args.quick,
            data_root=args.data_root,
            log=lambda msg: print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True),
        )
    total_s = time.perf_counter() - started
    info["load_avg_end"] = list(os.getloadavg())
    summary = summarize(results)
    settings = {
        "backbone": BACKBONE,
        "epochs": epochs,
        "seeds": list(seeds),
        "datasets": {ds: load_data(ds, args.quick, args.data_root)[4] for ds in datasets},
        "fractions": {ds: list(DATASETS[ds]["fractions"]) for ds in datasets},
        "input_size": {ds: DATASETS[ds]["input_size"] for ds in datasets},
        "data_config": {ds: data_config(ds).to_dict() for ds in datasets},
        "methods": {
            m: {
                "label": METHODS[m]["label"],
                "recipe": recipe(m, epochs),
                "params": {
                    **METHODS[m].get("params", {}),
                    **(COMMON if "params" in METHODS[m] else {}),
                },
            }
            for m in methods
        },
        "validation_split": None,
        "early_stopping": False,
    }
    print()
    for ds in datasets:
        print(f"{ds}: {settings['datasets'][ds]}, {DATASETS[ds]['input_size']} px")
    for m in methods:
        print(f"{METHODS[m]['label']}: {recipe(m, epochs)}")
    print()
    print(format_table(summary))
    print(
        f"\nHeld-out accuracy of the last epoch's model; below 100 %: mean (min-max) over "
        f"seeds {list(seeds)}. Total {total_s:.0f} s."
    )
    report = {
        "benchmark": "learning_curve",
        "quick": args.quick,
        "settings": settings,
        "machine": info,
        "total_wall_s": total_s,
        "summary": summary,
        "results": results,
    }
    _common.save_json(report, out)
    png = out.with_suffix(".png")
    plot(summary, results, png, _plot_note(info, settings))
    print(f"\nwrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
