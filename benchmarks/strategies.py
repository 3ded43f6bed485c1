"""Transfer-learning strategies compared: accuracy, training time and peak memory.

Runs each strategy on hymenoptera (ants vs bees photos, train -> val) and on
scikit-learn's 8x8 digits (a stratified subset, held-out test split), with the
default EfficientNet-Lite0 backbone and ``random_state=0`` everywhere:

==================  =============================================================
feature extraction  ``PretrainedFeatureExtractor`` + ``LogisticRegression``
head only           ``FineTuneClassifier(unfreeze=0)``: linear head on frozen features
last 1 block        ``unfreeze=1``: the backbone's top stage (``head``: 1x1 conv + BN)
last 2 blocks       ``unfreeze=2``: ``blocks.6`` and ``head``
two-phase           ``warmup_epochs=3`` of head only, then ``unfreeze=3``
full                ``unfreeze="all"``
from scratch        ``pretrained=False, unfreeze="all"``
==================  =============================================================

Each strategy runs in a fresh Python process, so its peak resident memory
(``resource.getrusage(...).ru_maxrss``) is its own. Fine-tuning uses
``validation_split=None`` and ``early_stopping=False``: the whole training set
trains and the model of the last epoch is the one scored. The validation (test)
set never influences training; a callback scores it after every epoch (on a
forked RNG, in eval mode, its time subtracted from the training time) to
report the best-epoch accuracy too, the figure the PyTorch tutorial quotes
(ResNet-18 on hymenoptera: 0.961). Since picking the best epoch looks at the
validation set, that number is optimistic; the final-epoch accuracy is the
honest one.

Usage::

    .venv/bin/python benchmarks/strategies.py            # ~15-20 min on an idle 2-core CPU
    .venv/bin/python benchmarks/strategies.py --quick    # tiny subsets, 2 epochs: a smoke run
    .venv/bin/python benchmarks/strategies.py --datasets digits --strategies head_only,full

Writes ``benchmarks/results/strategies.json`` (settings, machine, versions,
per-epoch validation accuracies) and ``benchmarks/results/strategies.png``
(accuracy against training time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(os.environ.get("SKTRANSFER_DATA", HERE.parent.parent / "shared" / "data"))
DEFAULT_OUT = HERE / "results" / "strategies.json"
SEED = 0

# Recipes. Cheap strategies (frozen stages reused from a one-time cache) get more
# epochs; the ones that run the whole network forward and backward on the CPU get
# few. lr is the head's learning rate; backbone stages train at lr * backbone_lr_scale.
STRATEGIES: dict[str, dict] = {
    "feature_extraction": {
        "label": "feature extraction + LR",
        "kind": "extract",
        "recipe": "PretrainedFeatureExtractor + LogisticRegression(C=1, lbfgs)",
    },
    "head_only": {
        "label": "head only",
        "kind": "finetune",
        "params": {"unfreeze": 0, "lr": 3e-3, "max_epochs": 15, "batch_size": 32},
    },
    "last_1": {
        "label": "last 1 block",
        "kind": "finetune",
        "params": {
            "unfreeze": 1,
            "lr": 1e-3,
            "backbone_lr_scale": 0.1,
            "max_epochs": 15,
            "batch_size": 32,
        },
    },
    "last_2": {
        "label": "last 2 blocks",
        "kind": "finetune",
        "params": {
            "unfreeze": 2,
            "lr": 1e-3,
            "backbone_lr_scale": 0.1,
            "max_epochs": 15,
            "batch_size": 32,
        },
    },
    "two_phase": {
        "label": "two-phase (3 head, then last 3)",
        "kind": "finetune",
        "params": {
            "unfreeze": 3,
            "warmup_epochs": 3,
            "lr": 1e-3,
            "backbone_lr_scale": 0.1,
            "max_epochs": 12,
            "batch_size": 32,
        },
    },
    "full": {
        "label": "full",
        "kind": "finetune",
        "params": {
            "unfreeze": "all",
            "lr": 1e-3,
            "backbone_lr_scale": 0.1,
            "max_epochs": 5,
            "batch_size": 16,
        },
    },
    "scratch": {
        "label": "from scratch",
        "kind": "finetune",
        "params": {
            "pretrained": False,
            "unfreeze": "all",
            "lr": 1e-3,
            "backbone_lr_scale": 1.0,
            "max_epochs": 5,
            "batch_size": 16,
        },
    },
}

# Digits: a stratified subset small enough for full fine-tuning at 224 px on a CPU.
DIGITS_TRAIN, DIGITS_TEST = 300, 300
QUICK = {
    "per_class_train": 12,
    "per_class_val": 8,
    "digits_train": 40,
    "digits_test": 40,
    "epochs": 2,
}


# --------------------------------------------------------------------------- data


def load_dataset(name: str, quick: bool, data_root: Path):
    """``(X_train, y_train, X_val, y_val, description)`` for ``name``."""
    if name == "hymenoptera":
        from sktransfer import load_image_folder

        root = data_root / "hymenoptera"
        Xtr, ytr = load_image_folder(root / "train", return_X_y=True)
        Xva, yva = load_image_folder(root / "val", return_X_y=True)
        desc = f"{root}: train ({len(ytr)}) -> val ({len(yva)})"
        if quick:
            Xtr, ytr = _per_class(Xtr, ytr, QUICK["per_class_train"])
            Xva, yva = _per_class(Xva, yva, QUICK["per_class_val"])
            desc += f"; quick: {len(ytr)} train, {len(yva)} val"
        return Xtr, ytr, Xva, yva, desc
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        n_train, n_test = (
            (QUICK["digits_train"], QUICK["digits_test"]) if quick else (DIGITS_TRAIN, DIGITS_TEST)
        )
        Xtr, Xva, ytr, yva = train_test_split(
            d.images,
            d.target,
            train_size=n_train,
            test_size=n_test,
            stratify=d.target,
            random_state=SEED,
        )
        desc = (
            f"sklearn load_digits (8x8, upsampled to 224 px): stratified {n_train} train, "
            f"{n_test} held-out test (random_state={SEED})"
        )
        return Xtr, ytr, Xva, yva, desc
    raise ValueError(f"Unknown dataset {name!r}; expected 'hymenoptera' or 'digits'.")


def _per_class(X, y, k):
    rng = np.random.RandomState(SEED)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c in np.unique(y)]
    )
    idx.sort()
    return X[idx], y[idx]


def strategy_params(name: str, quick: bool) -> dict:
    params = dict(STRATEGIES[name].get("params", {}))
    if quick and params:
        params["max_epochs"] = QUICK["epochs"]
        if params.get("warmup_epochs"):
            params["warmup_epochs"] = 1
    return params


def recipe(name: str, quick: bool) -> str:
    spec = STRATEGIES[name]
    if spec["kind"] == "extract":
        return spec["recipe"]
    p = strategy_params(name, quick)
    parts = [f"{p['max_epochs']} ep", f"lr {p['lr']:g}"]
    if p.get("unfreeze") not in (0, None):
        parts.append(f"backbone x{p.get('backbone_lr_scale', 0.1):g}")
    if p.get("warmup_epochs"):
        parts.append(f"{p['warmup_epochs']} ep head first")
    parts.append(f"bs {p['batch_size']}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- one run (child)


def _val_monitor_class():
    from skorch.callbacks import Callback

    class ValAccuracy(Callback):
        """Scores held-out data after each epoch without touching training.

        Runs on a forked RNG, in eval mode (restored afterwards), so the trained
        model is the one ``validation_split=None`` gives. When the bottom stages
        are frozen and cached, the held-out set's frozen activations are computed
        once and only the trainable top runs per epoch (the classifier's own
        ``_frozen_activations``, the path its training uses); otherwise it calls
        ``predict``. Its wall and CPU time are summed so they can be subtracted
        from the training time.
        """

        def __init__(self, X_val=None, y_val=None):
            self.X_val = X_val
            self.y_val = y_val
            self.clf = None  # set after the classifier exists (not a parameter: no cycle)
            self.seconds = 0.0
            self.cpu_seconds = 0.0
            self._acts = None

        def on_epoch_end(self, net, **kwargs):
            import torch

            from sktransfer import _runtime
            from sktransfer.io import as_image_source

            start, cpu = time.perf_counter(), time.process_time()
            module = net.module_
            was_training = module.training
            with torch.random.fork_rng(devices=[]):
                if module.input_stage > 0:
                    if self._acts is None:
                        self._acts = self.clf._frozen_activations(as_image_source(self.X_val), 0)
                    module.eval()
                    with torch.inference_mode():
                        logits = torch.cat(
                            [
                                module(_runtime.to_device(a, self.clf.device_)).float().cpu()
                                for a in self._acts.split(64)
                            ]
                        )
                    pred = self.clf.classes_[logits.argmax(1).numpy()]
                else:
                    pred = self.clf.predict(self.X_val)
            module.train(was_training)
            net.history.record("val_acc", float(np.mean(pred == self.y_val)))
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.process_time() - cpu

    return ValAccuracy


def run_one(task: dict) -> dict:
    """Fit one strategy on one dataset and measure it (runs in its own process)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor

    np.random.seed(SEED)
    torch.manual_seed(SEED)
    name, quick = task["strategy"], task["quick"]
    Xtr, ytr, Xva, yva, _ = load_dataset(task["dataset"], quick, Path(task["data_root"]))
    rss_before_mb = _peak_rss_mb()
    load_before = os.getloadavg()[0]
    spec = STRATEGIES[name]
    result: dict = {"dataset": task["dataset"], "strategy": name, "label": spec["label"]}

    if spec["kind"] == "extract":
        model = make_pipeline(
            PretrainedFeatureExtractor(verbose=0),
            LogisticRegression(max_iter=2000, random_state=SEED),
        )
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(Xtr, ytr)
        train_s = time.perf_counter() - start
        train_cpu_s = time.process_time() - cpu
        monitor_s = 0.0
        val_curve: list[float] = []
        params: dict = {}
    else:
        params = strategy_params(name, quick)
        monitor = _val_monitor_class()(Xva, yva)
        model = FineTuneClassifier(
            **params,
            validation_split=None,
            early_stopping=False,
            random_state=SEED,
            verbose=0,
            callbacks=[("val_accuracy", monitor)],
        )
        monitor.clf = model
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(Xtr, ytr)
        monitor_s = monitor.seconds
        train_s = time.perf_counter() - start - monitor_s
        train_cpu_s = time.process_time() - cpu - monitor.cpu_seconds
        val_curve = [float(a) for a in model.history_[:, "val_acc"]]
        result["train_loss"] = [float(v) for v in model.history_[:, "train_loss"]]
        result["n_frozen_stages"] = int(model.n_frozen_)
        result["stage_names"] = model.backbone_.stage_names

    start = time.perf_counter()
    pred = model.predict(Xva)
    predict_s = time.perf_counter() - start
    val_acc = float(np.mean(pred == yva))
    result.update(
        {
            "recipe": recipe(name, quick),
            "params": {k: v for k, v in params.items()},
            "n_train": int(len(ytr)),
            "n_val": int(len(yva)),
            "val_acc": val_acc,
            "val_acc_per_epoch": val_curve,
            "best_epoch_val_acc": max(val_curve) if val_curve else None,
            "best_epoch": int(np.argmax(val_curve)) + 1 if val_curve else None,
            "train_s": train_s,
            "train_cpu_s": train_cpu_s,
            "monitor_s": monitor_s,
            "predict_s": predict_s,
            "peak_rss_mb": _peak_rss_mb(),
            "rss_before_fit_mb": rss_before_mb,
            "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "torch_threads": torch.get_num_threads(),
            "loadavg_1min": [load_before, os.getloadavg()[0]],
        }
    )
    if val_curve and abs(val_curve[-1] - val_acc) > 1e-9:
        # the monitor scores the same model as predict after the last epoch
        result["warning"] = f"last monitored accuracy {val_curve[-1]} != final {val_acc}"
    return result


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_in_subprocess(task: dict) -> dict:
    """Run ``task`` in a fresh interpreter so each peak-memory figure is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(task), str(out)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            return {
                "dataset": task["dataset"],
                "strategy": task["strategy"],
                "label": STRATEGIES[task["strategy"]]["label"],
                "error": (proc.stderr or proc.stdout)[-3000:],
            }
        return json.loads(out.read_text())


# --------------------------------------------------------------------------- report


def machine_info() -> dict:
    import sklearn
    import skorch
    import timm
    import torch
    import torchvision

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_gb": round(mem_gb, 1) if mem_gb else None,
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "sklearn": sklearn.__version__,
        "skorch": skorch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def format_table(results: list[dict]) -> str:
    header = [
        "dataset",
        "strategy",
        "recipe",
        "val acc",
        "best-epoch acc",
        "train s",
        "train CPU s",
        "peak MB",
    ]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["dataset"], r["label"], "FAILED", "-", "-", "-", "-", "-"])
            continue
        best = r["best_epoch_val_acc"]
        rows.append(
            [
                r["dataset"],
                r["label"],
                r["recipe"],
                f"{r['val_acc']:.3f}",
                "-" if best is None else f"{best:.3f} (ep {r['best_epoch']})",
                f"{r['train_s']:.1f}",
                f"{r['train_cpu_s']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    numeric = {3, 4, 5, 6, 7}

    def fmt(row):
        cells = [
            str(c).rjust(w) if i in numeric else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        return "| " + " | ".join(cells) + " |"

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([fmt(header), sep, *map(fmt, rows)])


def plot(results: list[dict], datasets: list[str], path: Path, title_note: str) -> None:
    """Accuracy against training time, one panel per dataset.

    The y axis spans the pretrained strategies; a point far below them (from
    scratch) is drawn as a triangle on the bottom edge with its value in the label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 5.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        rows = [r for r in results if r["dataset"] == ds and "error" not in r]
        if not rows:
            continue
        accs = [a for r in rows for a in (r["val_acc"], r["best_epoch_val_acc"]) if a is not None]
        pretrained = [r["val_acc"] for r in rows if r["strategy"] != "scratch"] or accs
        lo = min(pretrained) - 0.03
        hi = min(1.0, max(accs) + 0.02)
        if ds == "hymenoptera":
            lo, hi = min(lo, 0.93), max(hi, 0.975)
        for i, r in enumerate(rows):
            color = f"C{list(STRATEGIES).index(r['strategy'])}"
            x, y = r["train_s"], r["val_acc"]
            label = r["label"]
            if y < lo:
                ax.scatter(x, lo, s=70, marker="v", color=color, zorder=3, clip_on=False)
                label = f"{label} ({y:.3f}, below the axis)"
                y = lo
            else:
                ax.scatter(x, y, s=60, color=color, zorder=3)
            best = r["best_epoch_val_acc"]
            if best is not None and best >= lo and best != r["val_acc"]:
                ax.scatter(x, best, s=60, facecolors="none", edgecolors=color, zorder=3)
                ax.plot([x, x], [y, best], color=color, lw=0.8, zorder=2)
            ax.annotate(
                label,
                (x, y),
                textcoords="offset points",
                fontsize=8,
                xytext=(7, 6 if y == lo else (-13 if i % 2 else 5)),
            )
        if ds == "hymenoptera":
            ax.axhline(0.95, color="grey", ls="--", lw=0.8)
            ax.axhline(0.961, color="grey", ls=":", lw=0.8)
            ax.annotate(
                "target 0.95",
                (1, 0.95),
                xycoords=("axes fraction", "data"),
                xytext=(-4, -9),
                textcoords="offset points",
                ha="right",
                fontsize=7,
                color="grey",
            )
            ax.annotate(
                "ResNet-18 tutorial, best epoch: 0.961",
                (1, 0.961),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 3),
                textcoords="offset points",
                ha="right",
                fontsize=7,
                color="grey",
            )
        ax.set_ylim(lo, hi)
        ax.set_xscale("log")
        ax.set_xlabel("training time (s, wall clock, log scale)")
        ax.set_ylabel("validation accuracy" if ds == "hymenoptera" else "held-out test accuracy")
        n_val = rows[0]["n_val"]
        ax.set_title(
            f"{ds} ({rows[0]['n_train']} train, {n_val} scored; 1 image = "
            f"{100 / n_val:.2f} points)",
            fontsize=10,
        )
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(
        "EfficientNet-Lite0 transfer strategies: filled = last epoch (the model kept), "
        "hollow = best epoch\n" + title_note,
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_note(info: dict) -> str:
    return (
        f"{info['cpu']}, {info['cpu_count']} cores, torch {info['torch']}; "
        "timed while other jobs shared the CPU"
    )


def replot(json_path: Path) -> int:
    """Print the table and redraw the PNG from a saved JSON, without training."""
    report = json.loads(json_path.read_text())
    results = report["results"]
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    print(format_table(results))
    png = json_path.with_suffix(".png")
    plot(results, datasets, png, _plot_note(report["machine"]))
    print(f"\nwrote {png}")
    return 0


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets and 2 epochs")
    parser.add_argument("--datasets", default="hymenoptera,digits")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON path (default {DEFAULT_OUT}, or a temporary folder with "
        "--quick; the PNG goes next to it)",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="print the table and redraw the plot of a saved run; train nothing",
    )
    args = parser.parse_args(argv)
    if args.replot is not None:
        return replot(args.replot)

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; known: {list(STRATEGIES)}")
    quick_out = Path(tempfile.gettempdir()) / "sktransfer-benchmarks" / "strategies_quick.json"
    out = args.out or (quick_out if args.quick else DEFAULT_OUT)

    results = []
    started = time.perf_counter()
    for ds in datasets:
        for name in strategies:
            task = {
                "dataset": ds,
                "strategy": name,
                "quick": args.quick,
                "data_root": str(args.data_root),
            }
            t0 = time.perf_counter()
            r = run_in_subprocess(task)
            r["wall_s"] = time.perf_counter() - t0
            results.append(r)
            status = (
                f"FAILED:\n{r['error']}"
                if "error" in r
                else f"acc {r['val_acc']:.3f}, train {r['train_s']:.1f} s, peak {r['peak_rss_mb']:.0f} MB"
            )
            print(
                f"[{time.perf_counter() - started:6.0f} s] {ds:12s} {r['label']:32s} {status}",
                file=sys.stderr,
                flush=True,
            )

    descriptions = {ds: load_dataset(ds, args.quick, args.data_root)[4] for ds in datasets}
    info = machine_info()
    note = _plot_note(info)
    print()
    for ds in datasets:
        print(f"{ds}: {descriptions[ds]}")
    print()
    print(format_table(results))
    print()
    print(
        "val acc: last epoch's model on the validation (hymenoptera) / held-out test (digits) "
        "set; best-epoch acc: the best of the per-epoch scores of the same run (optimistic: "
        "picked on that set). train s excludes that per-epoch scoring. peak MB: max RSS of "
        "the strategy's own process (includes ~the torch import)."
    )

    report = {
        "benchmark": "strategies",
        "quick": args.quick,
        "settings": {
            "backbone": "efficientnet_lite0",
            "random_state": SEED,
            "validation_split": None,
            "early_stopping": False,
            "datasets": descriptions,
            "strategies": {
                n: {
                    "label": STRATEGIES[n]["label"],
                    "recipe": recipe(n, args.quick),
                    "params": strategy_params(n, args.quick),
                }
                for n in strategies
            },
            "notes": (
                "Each strategy runs in its own process; peak_rss_mb is its ru_maxrss. train_s is "
                "the fit time minus the per-epoch scoring of the validation set (monitor_s). "
                "Timings were taken on a shared machine while other jobs used the CPU, so they "
                "are slower and noisier than on an idle machine; loadavg_1min gives the load "
                "before and after each run."
            ),
        },
        "machine": info,
        "total_wall_s": time.perf_counter() - started,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    png = out.with_suffix(".png")
    plot(results, datasets, png, note)
    print(f"\nwrote {out} and {png}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        res = run_one(json.loads(sys.argv[2]))
        Path(sys.argv[3]).write_text(json.dumps(res))
    else:
        sys.exit(main())
