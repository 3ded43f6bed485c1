"""GridSearchCV over fine-tuning depth and learning rate: cached frozen activations vs the naive skorch way.

Run from the repository root::

    .venv/bin/python benchmarks/grid_search.py --quick      # tiny subset, 1 epoch: a smoke run
    .venv/bin/python benchmarks/grid_search.py --small      # 120 images, 2 depths x 2 lrs, cv=2
    .venv/bin/python benchmarks/grid_search.py [--epochs 3] [--lrs 1e-3,1e-2]
        [--out benchmarks/results/grid_search.json]

One run searches ``{"unfreeze": [0, 1, 2], "lr": [two values]}`` with
``GridSearchCV(cv=3)`` (accuracy, refit on the whole training set) on the
hymenoptera training set (245 images), twice, on the same folds:

(a) **ours**: ``FineTuneClassifier(memory=<fresh temporary folder>,
    validation_split=None, early_stopping=False, random_state=0)``. The frozen
    bottom of the network runs once per (frozen weights, cut, image): each
    ``unfreeze`` level computes its prefix once for all 245 images, and every
    later epoch, fold, learning rate, scoring pass and the refit run only the
    trainable top on the cached activations.
(b) **naive**: written directly with skorch, the way its transfer-learning
    tutorial does it: a ``NeuralNetClassifier`` whose module is the whole
    EfficientNet-Lite0 (``load_backbone``) + global average pooling + a new
    ``Linear`` head, with the bottom stages frozen by ``requires_grad=False``
    and therefore recomputed, from decoded JPEGs, in every epoch, scoring pass
    and refit. A small ``BaseEstimator`` wrapper builds the net in ``fit`` so
    ``GridSearchCV`` can set ``unfreeze``.

Both train the same model the same way, so the comparison is of cost, not of
recipe: the same decoded and preprocessed inputs (``sktransfer.io.open_image``
+ ``ImageTransform`` with the backbone's data config), channels-last, AdamW
(weight decay 1e-4) with the head at ``lr`` and unfrozen backbone stages at
``lr * 0.1`` (skorch ``optimizer__param_groups``), batch 32, the same epochs,
``torch.manual_seed(0)`` before building (so the same head initialisation) and
the same shuffling. One deliberate departure from the tutorial's ``Freezer``:
frozen stages are kept in eval mode. ``requires_grad=False`` alone leaves
their BatchNorm layers in training mode (batch statistics, running statistics
updated), a different and worse model than "frozen features"; ours freezes
BatchNorm too (timm's ``freeze(include_bn_running_stats=True)``), so the naive
one must as well for the two searches to agree.

The naive module's head size is read off the pretrained classifier
(``backbone.classifier.in_features``, as tutorials read ``model.fc.in_features``);
ours probes it with a forward pass in every ``fit``, a cost it keeps here.

The searches run A-B-A in one process: ours (empty cache), naive, ours again
(new empty cache; ``--no-repeat`` skips it), so a machine load that drifts
during the long naive search weighs on both of ours alike; the speed-ups use
the mean of the two ours runs. The load average is sampled every 10 s during
each search and reported with it.

Reported: wall and CPU time of each whole search (``GridSearchCV.fit``,
refit included), the speed-up, ``best_params_``, ``best_score_`` and the
per-candidate, per-fold CV scores of both, the accuracy of each refitted
``best_estimator_`` on hymenoptera val (153 images, one image = 0.65 points),
how many val predictions the two disagree on and their largest probability
difference, and our cache's hits and misses (``sktransfer.cache.stats``). A
warm-up builds the backbone once before timing, so import and first-load
costs count for neither.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GridSearchCV
from skorch import NeuralNetClassifier
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common  # noqa: E402

from sktransfer import FineTuneClassifier, load_image_folder  # noqa: E402
from sktransfer import cache as sk_cache  # noqa: E402
from sktransfer.backbones import load_backbone  # noqa: E402
from sktransfer.io import ImageTransform, open_image  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "grid_search.json"
BACKBONE = "efficientnet_lite0"
SEED = 0
CV = 3
UNFREEZE = [0, 1, 2]
DEFAULT_LRS = (1e-3, 1e-2)
DEFAULT_EPOCHS = 3
BATCH_SIZE = 32
BACKBONE_LR_SCALE = 0.1
WEIGHT_DECAY = 1e-4
QUICK = {"per_class_train": 12, "per_class_val": 8, "epochs": 1}
# a small freeze-depth search, where each fit's fixed cost (building the backbone,
# probing it, keying the cache) weighs most against its short training
SMALL = {"per_class_train": 60, "per_class_val": 20, "epochs": 3, "unfreeze": [1, 2], "cv": 2}


# --------------------------------------------------------------------------- the naive way


class JpegDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses each JPEG on every access, as a textbook Dataset does."""

    def __init__(self, paths, targets, transform: ImageTransform):
        self.paths = list(paths)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        img = open_image(self.paths[i], self.transform.draft_size())
        return self.transform(img), self.targets[i]


class FrozenBottomNet(nn.Module):
    """Whole backbone + global average pooling + a new linear head; the bottom
    ``n_frozen`` stages have ``requires_grad=False`` and stay in eval mode."""

    def __init__(self, backbone: nn.Module, n_features: int, n_classes: int, n_frozen: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(n_features, n_classes)
        self.n_frozen = n_frozen
        for stage in backbone.stages[:n_frozen]:
            stage.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen BatchNorm: keep running statistics and use them (see module docstring)
        for stage in self.backbone.stages[: self.n_frozen]:
            stage.eval()
        return self

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)
        return self.fc(self.backbone(x).mean(dim=(2, 3)))


class NaiveSkorchFineTune(ClassifierMixin, BaseEstimator):
    """Builds a plain skorch ``NeuralNetClassifier`` over the full network in ``fit``."""

    def __init__(
        self,
        unfreeze=0,
        lr=1e-3,
        backbone_lr_scale=BACKBONE_LR_SCALE,
        weight_decay=WEIGHT_DECAY,
        max_epochs=DEFAULT_EPOCHS,
        batch_size=BATCH_SIZE,
        random_state=SEED,
    ):
        self.unfreeze = unfreeze
        self.lr = lr
        self.backbone_lr_scale = backbone_lr_scale
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.random_state = random_state

    def fit(self, X, y):
        self.classes_, y_enc = np.unique(np.asarray(y), return_inverse=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            backbone = load_backbone(BACKBONE)
            self.transform_ = ImageTransform(backbone.data_config)
            n_frozen = len(backbone.stages) - int(self.unfreeze)
            # as the tutorials do (``model.fc.in_features``): no probe forward
            n_features = backbone.classifier.in_features
            module = FrozenBottomNet(backbone, n_features, len(self.classes_), n_frozen)
            module = module.to(memory_format=torch.channels_last)
            self.net_ = NeuralNetClassifier(
                module,
                criterion=nn.CrossEntropyLoss,
                optimizer=torch.optim.AdamW,
                lr=self.lr,
                optimizer__weight_decay=self.weight_decay,
                optimizer__param_groups=[("backbone.*", {"lr": self.lr * self.backbone_lr_scale})],
                max_epochs=self.max_epochs,
                batch_size=self.batch_size,
                iterator_train__shuffle=True,
                train_split=None,
                classes=list(range(len(self.classes_))),
                device="cpu",
                verbose=0,
            )
            self.net_.fit(JpegDataset(X, y_enc, self.transform_), y=None)
        return self

    def predict_proba(self, X):
        return self.net_.predict_proba(JpegDataset(X, np.zeros(len(X)), self.transform_))

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


# --------------------------------------------------------------------------- running


def load_data(preset: dict | None, data_root: Path):
    root = data_root / "hymenoptera"
    Xtr, ytr = load_image_folder(root / "train", return_X_y=True)
    Xva, yva = load_image_folder(root / "val", return_X_y=True)
    if preset is not None:
        Xtr, ytr = _per_class(Xtr, ytr, preset["per_class_train"])
        Xva, yva = _per_class(Xva, yva, preset["per_class_val"])
    return Xtr, ytr, Xva, yva


def _per_class(X, y, n):
    idx = np.concatenate([np.flatnonzero(y == c)[:n] for c in np.unique(y)])
    return X[idx], y[idx]


class LoadSampler:
    """Samples the 1-minute load average every ``every`` seconds in a thread (a context manager)."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples))


def run_search(name, estimator, grid, Xtr, ytr, Xva, yva, log, after_search=None, cv=CV):
    """Time ``GridSearchCV.fit`` (refit included), then score the refitted model on val.

    ``after_search`` (optional) is called between the two; its result is returned too.
    Returns ``(result dict, val probabilities, after_search's result)``.
    """
    search = GridSearchCV(estimator, grid, cv=cv, refit=True, n_jobs=None, error_score="raise")
    load0 = os.getloadavg()[0]
    log(
        f"[{name}] searching {len(search.param_grid['unfreeze']) * len(search.param_grid['lr'])} "
        f"candidates x {cv} folds (load {load0:.1f}) ..."
    )
    with LoadSampler() as load:
        c0, t0 = time.process_time(), time.perf_counter()
        search.fit(Xtr, ytr)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    load1 = os.getloadavg()[0]
    between = after_search() if after_search is not None else None
    t1 = time.perf_counter()
    proba = search.best_estimator_.predict_proba(Xva)
    val_s = time.perf_counter() - t1
    pred = search.best_estimator_.classes_[np.argmax(proba, axis=1)]
    n_correct = int((pred == yva).sum())
    cv = search.cv_results_
    n_splits = search.n_splits_
    res = {
        "wall_s": wall,
        "cpu_s": cpu,
        "loadavg_1min_before": load0,
        "loadavg_1min_after": load1,
        "loadavg_1min_mean": load.mean,
        "refit_s": float(search.refit_time_),
        "best_params": _plain(search.best_params_),
        "best_score": float(search.best_score_),
        "best_index": int(search.best_index_),
        "candidates": [
            {
                "params": _plain(cv["params"][i]),
                "mean_test_score": float(cv["mean_test_score"][i]),
                "split_test_scores": [
                    float(cv[f"split{k}_test_score"][i]) for k in range(n_splits)
                ],
                "rank": int(cv["rank_test_score"][i]),
                "mean_fit_s": float(cv["mean_fit_time"][i]),
                "mean_score_s": float(cv["mean_score_time"][i]),
            }
            for i in range(len(cv["params"]))
        ],
        "val_accuracy": n_correct / len(yva),
        "val_correct": n_correct,
        "val_n": len(yva),
        "val_predict_s": val_s,
    }
    log(
        f"[{name}] {wall:.1f} s wall, {cpu:.1f} s CPU, load {load.mean:.1f}; best {res['best_params']} "
        f"cv {res['best_score']:.4f}; val {n_correct}/{len(yva)} ({val_s:.1f} s)"
    )
    return res, proba, between


def _plain(params: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()}


def top_ties(res: dict) -> list[dict]:
    """Candidates sharing the best mean CV score (GridSearchCV picks the first of them)."""
    best = max(c["mean_test_score"] for c in res["candidates"])
    return [c["params"] for c in res["candidates"] if c["mean_test_score"] == best]


def compare(ours_runs: list[dict], naive: dict, p_ours, p_naive, p_ours_all) -> dict:
    ours = ours_runs[0]
    wall = float(np.mean([r["wall_s"] for r in ours_runs]))
    cpu = float(np.mean([r["cpu_s"] for r in ours_runs]))
    pred_o, pred_n = p_ours.argmax(1), p_naive.argmax(1)
    diffs = [
        abs(a["mean_test_score"] - b["mean_test_score"])
        for a, b in zip(ours["candidates"], naive["candidates"])
    ]
    splits_equal = sum(
        a["split_test_scores"] == b["split_test_scores"]
        for a, b in zip(ours["candidates"], naive["candidates"])
    )
    return {
        "ours_wall_s_mean": wall,
        "ours_cpu_s_mean": cpu,
        "speedup_wall": naive["wall_s"] / wall,
        "speedup_cpu": naive["cpu_s"] / cpu,
        "speedup_wall_per_ours_run": [naive["wall_s"] / r["wall_s"] for r in ours_runs],
        "same_best_params": ours["best_params"] == naive["best_params"],
        "best_score_diff": ours["best_score"] - naive["best_score"],
        "val_correct_diff": ours["val_correct"] - naive["val_correct"],
        "val_predictions_disagree": int((pred_o != pred_n).sum()),
        "val_max_abs_proba_diff": float(np.abs(p_ours - p_naive).max()),
        "candidates_with_identical_fold_scores": f"{splits_equal}/{len(diffs)}",
        "max_abs_mean_cv_score_diff": float(max(diffs)),
        "ties_at_top_ours": top_ties(ours),
        "ties_at_top_naive": top_ties(naive),
        # the repeat starts from an empty cache too: same seed, same results expected
        "ours_runs_identical": all(
            r["candidates"][k]["split_test_scores"] == ours["candidates"][k]["split_test_scores"]
            for r in ours_runs
            for k in range(len(ours["candidates"]))
        )
        and all(np.array_equal(p, p_ours) for p in p_ours_all),
    }


def run_ours(epochs, grid, Xtr, ytr, Xva, yva, log, name, cv=CV) -> tuple[dict, np.ndarray]:
    """Our search with a new, empty cache folder; cache hits/misses and size go in the result."""
    memory = tempfile.mkdtemp(prefix="sktransfer-grid-")
    try:
        est = FineTuneClassifier(
            BACKBONE,
            memory=memory,
            max_epochs=epochs,
            batch_size=BATCH_SIZE,
            backbone_lr_scale=BACKBONE_LR_SCALE,
            weight_decay=WEIGHT_DECAY,
            optimizer="adamw",
            validation_split=None,
            early_stopping=False,
            lr_schedule="constant",  # the naive search's recipe: same model, compare cost
            label_smoothing=0.0,
            random_state=SEED,
            verbose=0,
        )
        sk_cache.stats(reset=True)
        res, proba, search_stats = run_search(
            name,
            est,
            grid,
            Xtr,
            ytr,
            Xva,
            yva,
            log,
            after_search=lambda: sk_cache.stats(reset=True),
            cv=cv,
        )
        res["cache_stats"] = {"search": search_stats, "val": sk_cache.stats(reset=True)}
        res["cache_bytes"] = sk_cache.resolve_memory(memory).size()
    finally:
        shutil.rmtree(memory, ignore_errors=True)
    return res, proba


def warm_up() -> None:
    """Import and first-build costs (package import, first weight load) count for neither."""
    bb = load_backbone(BACKBONE)
    cfg = bb.data_config
    with torch.no_grad():
        bb.eval()(torch.zeros(2, cfg.in_chans, cfg.input_size, cfg.input_size))


# --------------------------------------------------------------------------- output


def print_report(report: dict) -> None:
    o, n, c = report["ours"], report["naive"], report["comparison"]
    o2 = report.get("ours_repeat")
    cols = [("ours (memory=)", o)] + ([("ours, again", o2)] if o2 else []) + [("naive skorch", n)]

    def row(label, fn, last=""):
        return [label, *(fn(r) for _, r in cols), last]

    rows = [
        row("wall s (search + refit)", lambda r: r["wall_s"], f"{c['speedup_wall']:.1f}x"),
        row("CPU s (this process)", lambda r: r["cpu_s"], f"{c['speedup_cpu']:.1f}x"),
        row("mean load avg (1 min)", lambda r: f"{r['loadavg_1min_mean']:.1f}"),
        row(
            "best_params",
            lambda r: _fmt_params(r["best_params"]),
            "same" if c["same_best_params"] else "DIFFERENT",
        ),
        row("best CV accuracy", lambda r: f"{r['best_score']:.4f}", f"{c['best_score_diff']:+.4f}"),
        row(
            "val accuracy (refit best)",
            lambda r: f"{r['val_accuracy']:.4f} ({r['val_correct']}/{r['val_n']})",
            f"{c['val_correct_diff']:+d} img",
        ),
        row("val predict s", lambda r: r["val_predict_s"]),
    ]
    header = [
        "",
        *(name for name, _ in cols),
        "naive / ours" if o2 is None else "naive / mean ours",
    ]
    print(_common.format_table(rows, header))
    print()
    cand_rows = [
        [
            _fmt_params(a["params"]),
            f"{a['mean_test_score']:.4f} #{a['rank']}",
            f"{b['mean_test_score']:.4f} #{b['rank']}",
            " ".join(f"{v:.3f}" for v in a["split_test_scores"]),
            " ".join(f"{v:.3f}" for v in b["split_test_scores"]),
            a["mean_fit_s"],
            b["mean_fit_s"],
        ]
        for a, b in zip(o["candidates"], n["candidates"])
    ]
    header = ["candidate", "ours CV", "naive CV", "ours folds", "naive folds", "ours fit s",
              "naive fit s"]  # fmt: skip
    print(_common.format_table(cand_rows, header))
    print()
    for name, r in cols[:-1]:
        st = r["cache_stats"]
        print(
            f"cache ({name}): search {st['search']['hits']} hits / {st['search']['misses']} "
            f"misses; val predict {st['val']['hits']} hits / {st['val']['misses']} misses; "
            f"{r['cache_bytes'] / 2**20:.1f} MiB on disk"
        )
    print(
        f"val predictions that differ between the two refitted models: "
        f"{c['val_predictions_disagree']}/{o['val_n']}; max |proba diff| "
        f"{c['val_max_abs_proba_diff']:.2e}; candidates with identical fold scores: "
        f"{c['candidates_with_identical_fold_scores']}"
    )
    if o2 is not None:
        print(f"ours and ours-again give identical scores and val probabilities: "
              f"{c['ours_runs_identical']}")  # fmt: skip
    if len(c["ties_at_top_ours"]) > 1 or len(c["ties_at_top_naive"]) > 1:
        print(
            f"ties at the top (GridSearchCV takes the first): ours {c['ties_at_top_ours']}, "
            f"naive {c['ties_at_top_naive']}"
        )


def _fmt_params(p: dict) -> str:
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(p.items())
    )


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['per_class_train']} train / {QUICK['per_class_val']} val "
        "images per class, 1 epoch: a smoke run",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help=f"{2 * SMALL['per_class_train']} train / {2 * SMALL['per_class_val']} val images, "
        f"unfreeze {SMALL['unfreeze']}, cv={SMALL['cv']}, {SMALL['epochs']} epochs: the small "
        "freeze-depth search, where the fixed cost of each fit weighs most",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"max_epochs of every fit (default {DEFAULT_EPOCHS}; 1 with --quick)",
    )
    parser.add_argument(
        "--lrs",
        default=",".join(f"{v:g}" for v in DEFAULT_LRS),
        help="comma-separated head learning rates (two values)",
    )
    parser.add_argument(
        "--no-repeat", action="store_true", help="run ours once, not before and after naive"
    )
    parser.add_argument("--data-root", type=Path, default=_common.DATA)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for both searches (default: torch's choice); 1 keeps "
        "timings stable on a machine shared with other jobs",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON path (default {DEFAULT_OUT}; grid_search_quick.json with --quick)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = QUICK if args.quick else SMALL if args.small else None
    epochs = args.epochs or (preset["epochs"] if preset else DEFAULT_EPOCHS)
    cv = preset.get("cv", CV) if preset else CV
    lrs = [float(v) for v in args.lrs.split(",") if v.strip()]
    name = (
        "grid_search_quick.json" if args.quick else "grid_search_small.json" if args.small else None
    )
    out = args.out or (DEFAULT_OUT.with_name(name) if name else DEFAULT_OUT)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    Xtr, ytr, Xva, yva = load_data(preset, args.data_root)
    grid = {"unfreeze": (preset or {}).get("unfreeze", UNFREEZE), "lr": lrs}
    info = _common.machine_info()
    log(f"hymenoptera: {len(ytr)} train, {len(yva)} val; grid {grid}, cv={cv}, {epochs} epochs")
    warm_up()

    runs = {"ours": run_ours(epochs, grid, Xtr, ytr, Xva, yva, log, "ours", cv)}
    naive_est = NaiveSkorchFineTune(max_epochs=epochs, batch_size=BATCH_SIZE, random_state=SEED)
    naive, p_naive, _ = run_search("naive", naive_est, grid, Xtr, ytr, Xva, yva, log, cv=cv)
    if not args.no_repeat:
        # A-B-A: a load that drifts during the long naive search weighs on both of ours alike
        runs["ours_repeat"] = run_ours(epochs, grid, Xtr, ytr, Xva, yva, log, "ours, again", cv)
    ours, p_ours = runs["ours"]
    ours_runs = [r for r, _ in runs.values()]

    report = {
        "benchmark": "grid_search",
        "quick": args.quick,
        "small": args.small,
        "settings": {
            "data": f"{args.data_root / 'hymenoptera'}: train ({len(ytr)}) for the search, "
            f"val ({len(yva)}) for the refitted best_estimator_",
            "grid": grid,
            "cv": f"GridSearchCV(cv={cv}) -> StratifiedKFold({cv}), accuracy, refit=True, "
            "n_jobs=None",
            "backbone": BACKBONE,
            "max_epochs": epochs,
            "batch_size": BATCH_SIZE,
            "optimizer": f"AdamW(weight_decay={WEIGHT_DECAY}); head lr, backbone lr * "
            f"{BACKBONE_LR_SCALE}",
            "random_state": SEED,
            "ours": "FineTuneClassifier(memory=<fresh temp dir>, validation_split=None, "
            "early_stopping=False, lr_schedule='constant', label_smoothing=0.0, random_state=0, "
            "verbose=0)",
            "naive": "skorch NeuralNetClassifier(module=Lite0 + avg pool + Linear, bottom stages "
            "requires_grad=False and in eval mode, recomputed every epoch), JPEGs "
            "decoded per access, optimizer__param_groups=[('backbone.*', lr*0.1)]",
            "notes": (
                "The searches ran one after the other in this process (ours, naive, ours again "
                "with a new empty cache: A-B-A, the speed-ups use the mean of the two ours runs) "
                "on a 2-core machine shared with other jobs (loadavg_1min_mean: the load "
                "sampled every 10 s during each search), so wall times are noisy; cpu_s is this "
                "process's CPU time, less sensitive to other jobs but inflated by contention "
                "too. A warm-up built the backbone once before timing."
            ),
        },
        "machine": info,
        "ours": ours,
        "ours_repeat": runs["ours_repeat"][0] if "ours_repeat" in runs else None,
        "naive": naive,
        "comparison": compare(ours_runs, naive, p_ours, p_naive, [p for _, p in runs.values()]),
    }
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    print()
    print_report(report)
    path = _common.save_json(report, out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
