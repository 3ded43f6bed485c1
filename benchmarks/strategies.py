"""Transfer-learning strategies and fine-tuning recipes compared: accuracy over
several seeds, time per fit and peak memory.

Runs each strategy on hymenoptera (ants vs bees photos, train -> val) and on
scikit-learn's 8x8 digits (all 1,797, stratified 75/25 split, ``random_state=0``),
with the default EfficientNet-Lite0 backbone, for each of ``--seeds`` (the
fine-tuner's ``random_state``; the feature-extraction probe is deterministic and
runs once):

==================  =============================================================
feature extraction  ``PretrainedFeatureExtractor`` + ``LogisticRegression`` (the probe)
default             ``FineTuneClassifier()``: the library's defaults, untouched
old default         the defaults before the recipe change: linear head, constant lr
                    1e-3, 10 epochs, ``validation_split=0.2``, early stopping
recipe candidates   ``unfreeze`` 0-3, warm-up, ``lr_schedule``, ``label_smoothing``
head only ... full  the single-seed strategies of the first run (``--strategies``)
==================  =============================================================

Each (dataset, strategy, seed) runs in a fresh Python process, so its peak resident
memory (``resource.getrusage(...).ru_maxrss``) is its own. Except for the
``default`` strategies, fine-tuning uses ``validation_split=None`` and
``early_stopping=False``: the whole training set trains and the model of the last
epoch is the one scored. The validation (test) set never influences training; a
callback scores it after every epoch (on a forked RNG, in eval mode, its time
subtracted from the training time) to report the best-epoch accuracy too.

Time per fit: the first seed of every strategy fits from images (``memory=None``),
and its ``train_s`` is the cost of a fit. With ``--memory DIR`` the other seeds
take the frozen activations from that activation cache (exact: the same model and
the same predictions, far less compute); their times are not fit costs and are
marked ``"timed": false``.

Usage::

    .venv/bin/python benchmarks/strategies.py --memory /tmp/sktransfer-mem   # ~1 h shared 2-core CPU
    .venv/bin/python benchmarks/strategies.py --quick    # tiny subsets, 2 epochs: a smoke run
    .venv/bin/python benchmarks/strategies.py --datasets digits --strategies default,feature_extraction
    .venv/bin/python benchmarks/strategies.py --time-3000   # default fit vs the probe on 3,000 images

Writes ``benchmarks/results/strategies.json`` (settings, machine, git commit,
versions, per-seed runs, per-epoch validation accuracies, means and spreads) and
``benchmarks/results/strategies.png`` (mean accuracy against training time).
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
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # this checkout's sktransfer, also in the child processes

import _common  # noqa: E402

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
    # the library's defaults, as a user gets them (validation split and early stopping on)
    "default": {"label": "default FineTuneClassifier()", "kind": "finetune", "defaults": True},
    "old_default": {
        "label": "old default (head, constant lr)",
        "kind": "finetune",
        "defaults": True,
        "params": {
            "unfreeze": 0,
            "lr": 1e-3,
            "warmup_epochs": 0,
            "lr_schedule": "constant",
            "label_smoothing": 0.0,
            "max_epochs": 10,
        },
    },
    # recipe candidates (validation_split=None, early_stopping=False)
    "head_cosine": {
        "label": "head, cosine, ls 0.1",
        "kind": "finetune",
        "params": {
            "unfreeze": 0,
            "lr": 3e-3,
            "lr_schedule": "cosine",
            "label_smoothing": 0.1,
            "max_epochs": 10,
        },
    },
    "u1_cosine": {
        "label": "1 head ep, last 1, cosine",
        "kind": "finetune",
        "params": {
            "unfreeze": 1,
            "warmup_epochs": 1,
            "lr_schedule": "cosine",
            "max_epochs": 6,
        },
    },
    "u2_cosine": {
        "label": "1 head ep, last 2, cosine",
        "kind": "finetune",
        "params": {
            "unfreeze": 2,
            "warmup_epochs": 1,
            "lr_schedule": "cosine",
            "max_epochs": 6,
        },
    },
    "u2_cosine_ls": {
        "label": "1 head ep, last 2, cosine, ls 0.1",
        "kind": "finetune",
        "params": {
            "unfreeze": 2,
            "warmup_epochs": 1,
            "lr_schedule": "cosine",
            "label_smoothing": 0.1,
            "max_epochs": 6,
        },
    },
    "u2_onecycle_ls": {
        "label": "2 head ep, last 2, onecycle, ls 0.1",
        "kind": "finetune",
        "params": {
            "unfreeze": 2,
            "warmup_epochs": 2,
            "lr_schedule": "onecycle",
            "label_smoothing": 0.1,
            "max_epochs": 8,
        },
    },
    "u3_cosine_ls": {
        "label": "1 head ep, last 3, cosine, ls 0.1",
        "kind": "finetune",
        "params": {
            "unfreeze": 3,
            "warmup_epochs": 1,
            "lr_schedule": "cosine",
            "label_smoothing": 0.1,
            "max_epochs": 6,
        },
    },
    # the strategies of the first (single-seed) run
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

# Every fine-tuning strategy starts from these (the defaults before the recipe
# change, without validation split and early stopping) and overrides some.
BASE_PARAMS = {
    "unfreeze": 0,
    "lr": 1e-3,
    "backbone_lr_scale": 0.1,
    "layer_decay": 1.0,
    "warmup_epochs": 0,
    "lr_schedule": "constant",
    "label_smoothing": 0.0,
    "max_epochs": 10,
    "batch_size": 32,
    "validation_split": None,
    "early_stopping": False,
}

# the strategies a plain run compares (the others: --strategies)
RECIPE_STRATEGIES = [
    "feature_extraction",
    "default",
    "old_default",
    "head_cosine",
    "u1_cosine",
    "u2_cosine",
    "u2_cosine_ls",
    "u2_onecycle_ls",
    "u3_cosine_ls",
]
SEEDS = (0, 1, 2)
# Digits: all 1,797 images, a stratified 75/25 split.
DIGITS_TEST_FRACTION = 0.25
QUICK = {
    "per_class_train": 12,
    "per_class_val": 8,
    "digits_train": 80,
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
        if quick:
            sizes = {"train_size": QUICK["digits_train"], "test_size": QUICK["digits_test"]}
        else:
            sizes = {"test_size": DIGITS_TEST_FRACTION}
        Xtr, Xva, ytr, yva = train_test_split(
            d.images, d.target, **sizes, stratify=d.target, random_state=SEED
        )
        desc = (
            f"sklearn load_digits (8x8, upsampled to 224 px): stratified {len(ytr)} train, "
            f"{len(yva)} held-out test (random_state={SEED})"
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
    """The strategy's parameters, the library's defaults filled in (for the record)."""
    from sktransfer import FineTuneClassifier

    spec = STRATEGIES[name]
    if spec["kind"] == "extract":
        return {}
    if name == "default":
        defaults = FineTuneClassifier().get_params()
        params = {k: defaults[k] for k in BASE_PARAMS}
    else:
        params = dict(BASE_PARAMS)  # fixed, whatever the library's defaults become
        if spec.get("defaults"):
            params.update(validation_split=0.2, early_stopping=5)
    params.update(spec.get("params", {}))
    if quick:
        params["max_epochs"] = min(params["max_epochs"], QUICK["epochs"])
        if params.get("warmup_epochs"):
            params["warmup_epochs"] = 1
    return params


def recipe(name: str, quick: bool) -> str:
    spec = STRATEGIES[name]
    if spec["kind"] == "extract":
        return spec["recipe"]
    p = strategy_params(name, quick)
    parts = [f"unfreeze {p['unfreeze']}", f"{p['max_epochs']} ep", f"lr {p['lr']:g}"]
    if p.get("unfreeze") not in (0, None):
        parts.append(f"backbone x{p['backbone_lr_scale']:g}")
        if p.get("layer_decay", 1.0) != 1.0:
            parts.append(f"layer decay {p['layer_decay']:g}")
    if p.get("warmup_epochs") and p.get("unfreeze") not in (0, None):
        parts.append(f"{p['warmup_epochs']} ep head first")
    if p.get("lr_schedule", "constant") != "constant":
        parts.append(p["lr_schedule"])
    if p.get("label_smoothing"):
        parts.append(f"ls {p['label_smoothing']:g}")
    parts.append(f"bs {p['batch_size']}")
    if p.get("validation_split") is not None:
        parts.append(f"val split {p['validation_split']:g}")
    if p.get("early_stopping"):
        parts.append(f"early stop {p['early_stopping']}")
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

    seed = int(task.get("seed", SEED))
    np.random.seed(seed)
    torch.manual_seed(seed)
    name, quick = task["strategy"], task["quick"]
    Xtr, ytr, Xva, yva, _ = load_dataset(task["dataset"], quick, Path(task["data_root"]))
    rss_before_mb = _peak_rss_mb()
    load_before = os.getloadavg()[0]
    spec = STRATEGIES[name]
    result: dict = {
        "dataset": task["dataset"],
        "strategy": name,
        "label": spec["label"],
        "seed": seed,
        "timed": not task.get("memory"),
    }

    if spec["kind"] == "extract":
        model = make_pipeline(
            PretrainedFeatureExtractor(verbose=0, memory=task.get("memory")),
            LogisticRegression(max_iter=2000, random_state=SEED),
        )
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(Xtr, ytr)
        train_s = time.perf_counter() - start
        train_cpu_s = time.process_time() - cpu
        monitor_s = 0.0
        val_curve: list[float] = []
        params: dict = {}
        result["precision"] = model[0].precision_
    else:
        params = strategy_params(name, quick)
        monitor = _val_monitor_class()(Xva, yva)
        model = FineTuneClassifier(
            **params,
            random_state=seed,
            verbose=0,
            callbacks=[("val_accuracy", monitor)],
            memory=task.get("memory"),
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
        result["precision"] = model.net_.amp_dtype
        result["epochs_run"] = len(model.history_)
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
                "dataset": task.get("dataset"),
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
        "git_commit": _common.git_commit(),
        "load_avg_start": list(os.getloadavg()),
    }


def summarize(results: list[dict]) -> list[dict]:
    """Per (dataset, strategy): mean, spread (min, max, std) of the final accuracy over
    seeds, and the time of the timed fit (the one from images, no activation cache)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if "error" not in r:
            groups.setdefault((r["dataset"], r["strategy"]), []).append(r)
    out = []
    for (ds, name), rows in groups.items():
        accs = np.array([r["val_acc"] for r in rows])
        timed = [r for r in rows if r.get("timed", True)]
        best = [r["best_epoch_val_acc"] for r in rows if r["best_epoch_val_acc"] is not None]
        out.append(
            {
                "dataset": ds,
                "strategy": name,
                "label": rows[0]["label"],
                "recipe": rows[0]["recipe"],
                "seeds": [r["seed"] for r in rows],
                "val_acc_per_seed": accs.tolist(),
                "val_acc_mean": float(accs.mean()),
                "val_acc_min": float(accs.min()),
                "val_acc_max": float(accs.max()),
                "val_acc_std": float(accs.std()),
                "best_epoch_val_acc_mean": float(np.mean(best)) if best else None,
                "fit_s": timed[0]["train_s"] if timed else None,
                "fit_cpu_s": timed[0]["train_cpu_s"] if timed else None,
                "peak_rss_mb": timed[0]["peak_rss_mb"] if timed else None,
                "n_train": rows[0]["n_train"],
                "n_val": rows[0]["n_val"],
            }
        )
    return out


def format_summary(summary: list[dict]) -> str:
    header = ["dataset", "strategy", "recipe", "seeds", "mean acc", "min-max", "fit s", "fit CPU s"]
    rows = []
    probe = {r["dataset"]: r for r in summary if r["strategy"] == "feature_extraction"}
    for r in summary:
        fit = "-" if r["fit_s"] is None else f"{r['fit_s']:.1f}"
        cpu = "-" if r["fit_cpu_s"] is None else f"{r['fit_cpu_s']:.1f}"
        p = probe.get(r["dataset"])
        if p and p["fit_s"] and r["fit_s"] and r is not p:
            fit += f" ({r['fit_s'] / p['fit_s']:.1f}x)"
        rows.append(
            [
                r["dataset"],
                r["label"],
                r["recipe"],
                len(r["seeds"]),
                f"{r['val_acc_mean']:.3f}",
                f"{r['val_acc_min']:.3f}-{r['val_acc_max']:.3f}",
                fit,
                cpu,
            ]
        )
    return _common.format_table(rows, header)


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
        rows = [
            {
                **r,
                "val_acc": r["val_acc_mean"],
                "best_epoch_val_acc": r["best_epoch_val_acc_mean"],
                "train_s": r["fit_s"],
            }
            for r in results
            if r["dataset"] == ds and r.get("fit_s")
        ]
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
        "EfficientNet-Lite0 transfer strategies, mean over seeds: filled = last epoch "
        "(the model kept), hollow = best epoch\n" + title_note,
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
    results = report.get("summary") or summarize(report["results"])
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    print(format_summary(results))
    png = json_path.with_suffix(".png")
    plot(results, datasets, png, _plot_note(report["machine"]))
    print(f"\nwrote {png}")
    return 0


# --------------------------------------------------------------------------- main


def digits_3000(n: int = 3000):
    """``n`` distinct 8x8 digit images (n <= 3,594): all 1,797, then some of them
    shifted by one pixel; for n < 1,797 a stratified subset."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    if n < len(d.target):
        X, _, y, _ = train_test_split(
            d.images, d.target, train_size=n, stratify=d.target, random_state=SEED
        )
        return X, y
    rng = np.random.RandomState(SEED)
    extra = rng.choice(len(d.target), size=n - len(d.target), replace=False)
    shifted = np.roll(d.images[extra], 1, axis=2)
    return np.concatenate([d.images, shifted]), np.concatenate([d.target, d.target[extra]])


def time_one(task: dict) -> dict:
    """Time one fit on the 3,000 digit images (runs in its own process)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor

    X, y = digits_3000(int(task.get("n_images", 3000)))
    if task["strategy"] == "feature_extraction":
        model = make_pipeline(
            PretrainedFeatureExtractor(verbose=0),
            LogisticRegression(max_iter=2000, random_state=SEED),
        )
    else:
        model = FineTuneClassifier(**strategy_params(task["strategy"], False), verbose=0,
                                   random_state=SEED)  # fmt: skip
    load = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(X, y)
    out = {
        "strategy": task["strategy"],
        "n_images": int(len(y)),
        "fit_s": time.perf_counter() - start,
        "fit_cpu_s": time.process_time() - cpu,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1min": [load, os.getloadavg()[0]],
    }
    if task["strategy"] != "feature_extraction":
        out["epochs_run"] = len(model.history_)
        out["precision"] = model.net_.amp_dtype
        out["unfreeze_"] = model.unfreeze_  # the depth unfreeze="auto" chose
        out["unfreeze_scores_"] = model.unfreeze_scores_
    else:
        out["precision"] = model[0].precision_
    return out


def run_timing(rounds: int, strategy: str, n_images: int = 3000) -> dict:
    """The probe and ``strategy`` fitted on 3,000 images, ``rounds`` times. In each
    round the two fits run at the same time, in two processes, so that the load of
    a shared machine weighs on both alike; the CPU time of each is its own."""
    from concurrent.futures import ThreadPoolExecutor

    runs = []
    for k in range(rounds):
        names = ("feature_extraction", strategy)
        with ThreadPoolExecutor(2) as pool:
            pair = list(
                pool.map(
                    lambda n: run_in_subprocess(
                        {"strategy": n, "mode": "time", "n_images": n_images}
                    ),
                    names,
                )
            )
        for name, r in zip(names, pair):
            r["round"] = k
            runs.append(r)
            print(f"3000 images, round {k}: {name}: {r.get('fit_s', 'FAILED')}", file=sys.stderr,
                  flush=True)  # fmt: skip
    ratios, cpu_ratios = [], []
    for k in range(rounds):
        pair = {r["strategy"]: r for r in runs if r["round"] == k and "error" not in r}
        if len(pair) == 2:
            ratios.append(pair[strategy]["fit_s"] / pair["feature_extraction"]["fit_s"])
            cpu_ratios.append(pair[strategy]["fit_cpu_s"] / pair["feature_extraction"]["fit_cpu_s"])
    return {
        "cpu_ratio_per_round": cpu_ratios,
        "note": "the two fits of a round ran concurrently on the same (shared) CPU",
        "data": f"digits_3000({n_images}): load_digits images (beyond 1,797: some shifted by 1 px)",
        "n_images": n_images,
        "strategy": strategy,
        "params": strategy_params(strategy, False),
        "runs": runs,
        "ratio_per_round": ratios,
    }


def search(dataset: str, candidates: dict, seeds, memory: str, data_root: Path, log) -> list:
    """Fit recipe ``candidates`` (name -> parameters over ``BASE_PARAMS``) in this
    process, frozen activations from ``memory``: accuracy per seed, not fit costs."""
    from sktransfer import FineTuneClassifier

    Xtr, ytr, Xva, yva, _ = load_dataset(dataset, False, data_root)
    out = []
    for name, params in candidates.items():
        accs, secs = [], []
        for seed in seeds:
            clf = FineTuneClassifier(**{**BASE_PARAMS, **params}, memory=memory, verbose=0,
                                     random_state=seed)  # fmt: skip
            start = time.perf_counter()
            clf.fit(Xtr, ytr)
            secs.append(time.perf_counter() - start)
            accs.append(float(np.mean(clf.predict(Xva) == yva)))
        row = {"dataset": dataset, "name": name, "params": params, "seeds": list(seeds),
               "val_acc_per_seed": accs, "val_acc_mean": float(np.mean(accs)),
               "cached_fit_s": secs}  # fmt: skip
        log(json.dumps(row))
        out.append(row)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets and 2 epochs")
    parser.add_argument("--datasets", default="hymenoptera,digits")
    parser.add_argument("--strategies", default=",".join(RECIPE_STRATEGIES))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument(
        "--memory",
        default=None,
        help="activation cache folder for the seeds after the first (exact, not timed)",
    )
    parser.add_argument(
        "--time-3000",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only time the default fit against the probe on 3,000 images, ROUNDS times; "
        "the result goes into the JSON's cost_3000 (other entries kept)",
    )
    parser.add_argument(
        "--n-images", type=int, default=3000, help="images for --time-3000 (default 3000)"
    )
    parser.add_argument(
        "--untimed-datasets",
        default="",
        help="datasets whose every run (first seed included) reads --memory: accuracy only",
    )
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
    parser.add_argument(
        "--search",
        default=None,
        metavar="JSON",
        help="recipe search instead: a JSON object name -> parameters (over BASE_PARAMS), fitted "
        "in this process with frozen activations from --memory; rows are appended to the "
        "JSON's 'search' (other entries kept)",
    )
    args = parser.parse_args(argv)
    if args.replot is not None:
        return replot(args.replot)
    if args.search is not None:
        if not args.memory:
            parser.error("--search needs --memory")
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        rows = []
        for ds in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            rows += search(ds, json.loads(args.search), seeds, args.memory, args.data_root,
                           lambda m: print(m, flush=True))  # fmt: skip
        out = args.out or DEFAULT_OUT
        report = json.loads(out.read_text()) if out.exists() else {"benchmark": "strategies"}
        report.setdefault("search", []).extend(
            {**r, "git_commit": _common.git_commit()} for r in rows
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        return 0
    quick_out = Path(tempfile.gettempdir()) / "sktransfer-benchmarks" / "strategies_quick.json"
    out = args.out or (quick_out if args.quick else DEFAULT_OUT)
    if args.time_3000:
        timing = run_timing(args.time_3000, "default", args.n_images)
        timing["machine"] = machine_info()
        report = json.loads(out.read_text()) if out.exists() else {"benchmark": "strategies"}
        report["cost_3000"] = timing
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(json.dumps({k: timing[k] for k in ("ratio_per_round", "cpu_ratio_per_round")}))
        print(f"wrote cost_3000 into {out}")
        return 0 if timing["ratio_per_round"] else 1

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    untimed = {d.strip() for d in args.untimed_datasets.split(",") if d.strip()}
    if untimed and not args.memory:
        parser.error("--untimed-datasets needs --memory")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; known: {list(STRATEGIES)}")

    results = []
    started = time.perf_counter()
    for ds in datasets:
        for name in strategies:
            # the probe is deterministic (extraction + lbfgs): one run
            run_seeds = seeds[:1] if STRATEGIES[name]["kind"] == "extract" else seeds
            for i, seed in enumerate(run_seeds):
                task = {
                    "dataset": ds,
                    "strategy": name,
                    "seed": seed,
                    "quick": args.quick,
                    "data_root": str(args.data_root),
                    "memory": args.memory if i > 0 or ds in untimed else None,
                }
                t0 = time.perf_counter()
                r = run_in_subprocess(task)
                r["wall_s"] = time.perf_counter() - t0
                results.append(r)
                status = (
                    f"FAILED:\n{r['error']}"
                    if "error" in r
                    else f"acc {r['val_acc']:.3f}, train {r['train_s']:.1f} s"
                    + ("" if r["timed"] else " (cached)")
                )
                print(
                    f"[{time.perf_counter() - started:6.0f} s] {ds:12s} {r['label']:34s} "
                    f"seed {seed} {status}",
                    file=sys.stderr,
                    flush=True,
                )

    descriptions = {ds: load_dataset(ds, args.quick, args.data_root)[4] for ds in datasets}
    info = machine_info()
    summary = summarize(results)
    print()
    for ds in datasets:
        print(f"{ds}: {descriptions[ds]}")
    print()
    print(format_summary(summary))
    print()
    print(
        "mean acc: last epoch's model on the validation (hymenoptera) / held-out test "
        "(digits) set, mean over seeds (min-max: the spread). fit s: one fit from images "
        "(the first seed, no activation cache), less the per-epoch scoring; (Nx): over the "
        "probe's fit."
    )
    report = {
        "benchmark": "strategies",
        "quick": args.quick,
        "settings": {
            "backbone": "efficientnet_lite0",
            "seeds": seeds,
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
                "Each (dataset, strategy, seed) runs in its own process; peak_rss_mb is its "
                "ru_maxrss. train_s is the fit time minus the per-epoch scoring of the "
                "validation set (monitor_s). The first seed of each strategy fits from images "
                "(timed: true); with an activation cache (--memory) the other seeds read the "
                "frozen activations from it (timed: false: same model, not a fit cost). "
                "Timings were taken on a shared machine while other jobs used the CPU; "
                "loadavg_1min gives the load before and after each run."
            ),
        },
        "machine": info,
        "total_wall_s": time.perf_counter() - started,
        "summary": summary,
        "results": results,
    }
    if out.exists() and not args.quick:
        old = json.loads(out.read_text())
        for key in ("cost_3000", "search"):  # written by --time-3000 and --search
            if key in old:
                report[key] = old[key]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    png = out.with_suffix(".png")
    plot(summary, datasets, png, _plot_note(info))
    print(f"\nwrote {out} and {png}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child_task = json.loads(sys.argv[2])
        res = time_one(child_task) if child_task.get("mode") == "time" else run_one(child_task)
        Path(sys.argv[3]).write_text(json.dumps(res))
    else:
        sys.exit(main())
