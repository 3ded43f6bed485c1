"""The offline demo behind ``sktransfer demo`` (and ``make demo``).

Two small tasks on data that ships inside installed packages, so the demo runs
without network access or downloaded files:

1. **digits**: scikit-learn's 8x8 handwritten digits (``load_digits``). The
   images go to :class:`~sktransfer.PretrainedFeatureExtractor` as they are
   (``digits.images``, shape ``(n, 8, 8)``, values 0..16); the extractor scales,
   upsamples and normalizes them. A ``LogisticRegression`` on the features is
   scored on a stratified test split, next to a ``LogisticRegression`` on the
   raw 64 pixels as a reference.
2. **crops**: many random crops (random size, position, horizontal flip) of
   the two photos of ``load_sample_images`` (``china.jpg``, ``flower.jpg``),
   labelled by the photo they come from; 5-fold cross-validated accuracy of a
   ``LogisticRegression`` on the features, next to one on raw 32x32 pixels.

For each task the demo prints accuracy, feature shape, throughput and time,
and it ends with a summary table. :func:`run_demo` returns the rows of that
table as :class:`DemoResult` objects.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from . import _runtime
from .extraction import PretrainedFeatureExtractor

__all__ = ["DemoResult", "run_demo", "random_crops", "DEFAULT_N_DIGITS"]

# All 1797 digits + 120 crops: about 20 s of extraction on an idle 2-core CPU with native
# bf16 (~130 images/s), under a minute in fp32 (~45 images/s).
DEFAULT_N_DIGITS = 1797
DEFAULT_N_CROPS = 60
QUICK_N_DIGITS = 80
QUICK_N_CROPS = 10
_CV_FOLDS = 5


@dataclass
class DemoResult:
    """One row of the demo's summary table.

    Examples
    --------
    >>> r = DemoResult(task="digits", n_images=100, feature_shape=(100, 1280), seconds=2.0,
    ...                accuracy=0.96, reference_accuracy=0.97, reference="raw 8x8 pixels",
    ...                evaluation="test split")
    >>> r.images_per_second
    50.0
    >>> print(format_summary([r]))  # doctest: +NORMALIZE_WHITESPACE
    task    images  features  time (s)  img/s  evaluation  accuracy  reference
    ------  ------  --------  --------  -----  ----------  --------  ----------------------
    digits  100     100x1280  2.0       50.0   test split  0.960     0.970 (raw 8x8 pixels)
    """

    task: str
    n_images: int
    feature_shape: tuple[int, int]
    seconds: float
    accuracy: float
    reference_accuracy: float
    reference: str
    evaluation: str

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("inf")


def random_crops(
    images: list[np.ndarray], n_per_image: int, *, min_size: int = 64, max_size: int = 256, seed=0
) -> tuple[list[np.ndarray], np.ndarray]:
    """Square crops of random size and position, randomly flipped left-right.

    Returns the crops (uint8 arrays of shape ``(s, s, 3)``, sizes vary) and
    the index of the image each crop comes from.

    Examples
    --------
    >>> img = np.zeros((100, 120, 3), dtype=np.uint8)
    >>> crops, y = random_crops([img, img], 3, min_size=10, max_size=50)
    >>> len(crops), y.tolist(), all(10 <= c.shape[0] <= 50 for c in crops)
    (6, [0, 0, 0, 1, 1, 1], True)
    """
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for label, img in enumerate(images):
        h, w = img.shape[:2]
        for _ in range(n_per_image):
            s = int(rng.integers(min_size, min(max_size, h, w) + 1))
            top = int(rng.integers(0, h - s + 1))
            left = int(rng.integers(0, w - s + 1))
            crop = img[top : top + s, left : left + s]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crops.append(np.ascontiguousarray(crop))
            labels.append(label)
    return crops, np.asarray(labels)


def _raw_pixels(crops: list[np.ndarray], side: int = 32) -> np.ndarray:
    return (
        np.stack(
            [
                np.asarray(Image.fromarray(c).resize((side, side), Image.BILINEAR)).ravel()
                for c in crops
            ]
        ).astype(np.float32)
        / 255.0
    )


def _logreg() -> LogisticRegression:
    return LogisticRegression(max_iter=2000)


def _timed_transform(extractor: PretrainedFeatureExtractor, X) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    features = extractor.transform(X)
    return features, time.perf_counter() - start


def _digits_task(extractor, n_digits: int, seed: int, out: TextIO) -> DemoResult:
    digits = load_digits()
    X, y = digits.images, digits.target
    if n_digits < len(X):
        X, _, y, _ = train_test_split(X, y, train_size=n_digits, stratify=y, random_state=seed)
    train, test = train_test_split(np.arange(len(X)), test_size=0.25, stratify=y, random_state=seed)
    print(
        f"\n[1/2] digits: {len(X)} images of 8x8 pixels, 10 classes "
        f"({len(train)} train / {len(test)} test, stratified)",
        file=out,
        flush=True,
    )
    features, seconds = _timed_transform(extractor, X)
    clf = make_pipeline(StandardScaler(), _logreg()).fit(features[train], y[train])
    accuracy = clf.score(features[test], y[test])
    raw = X.reshape(len(X), -1) / 16.0
    reference = _logreg().fit(raw[train], y[train]).score(raw[test], y[test])
    result = DemoResult(
        task="digits",
        n_images=len(X),
        feature_shape=features.shape,
        seconds=seconds,
        accuracy=accuracy,
        reference_accuracy=reference,
        reference="raw 8x8 pixels",
        evaluation="test split",
    )
    _print_result(result, out)
    return result


def _crops_task(extractor, n_crops: int, seed: int, out: TextIO) -> DemoResult:
    sample = load_sample_images()
    names = [f.rsplit("/", 1)[-1] for f in sample.filenames]
    crops, y = random_crops(list(sample.images), n_crops, seed=seed)
    print(
        f"\n[2/2] crops: {len(crops)} random crops (64-256 px, random flips) of "
        f"{' and '.join(names)}, labelled by photo ({_CV_FOLDS}-fold CV)",
        file=out,
        flush=True,
    )
    features, seconds = _timed_transform(extractor, crops)
    cv = StratifiedKFold(_CV_FOLDS, shuffle=True, random_state=seed)
    accuracy = cross_val_score(make_pipeline(StandardScaler(), _logreg()), features, y, cv=cv)
    reference = cross_val_score(_logreg(), _raw_pixels(crops), y, cv=cv)
    result = DemoResult(
        task="crops",
        n_images=len(crops),
        feature_shape=features.shape,
        seconds=seconds,
        accuracy=float(accuracy.mean()),
        reference_accuracy=float(reference.mean()),
        reference="raw 32x32 pixels",
        evaluation=f"{_CV_FOLDS}-fold CV",
    )
    _print_result(result, out)
    return result


def _print_result(r: DemoResult, out: TextIO) -> None:
    print(
        f"      features {r.feature_shape}, {r.seconds:.1f} s, {r.images_per_second:.1f} images/s\n"
        f"      accuracy ({r.evaluation}): {r.accuracy:.3f}   "
        f"reference ({r.reference} + LogisticRegression): {r.reference_accuracy:.3f}",
        file=out,
        flush=True,
    )


def format_summary(results: list[DemoResult]) -> str:
    """The summary table printed at the end of the demo."""
    header = (
        "task",
        "images",
        "features",
        "time (s)",
        "img/s",
        "evaluation",
        "accuracy",
        "reference",
    )
    rows = [
        (
            r.task,
            str(r.n_images),
            "x".join(map(str, r.feature_shape)),
            f"{r.seconds:.1f}",
            f"{r.images_per_second:.1f}",
            r.evaluation,
            f"{r.accuracy:.3f}",
            f"{r.reference_accuracy:.3f} ({r.reference})",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(
    *,
    quick: bool = False,
    n_digits: int | None = None,
    n_crops: int | None = None,
    precision: str = "auto",
    batch_size: int | str = "auto",
    device: str = "auto",
    progress: bool = True,
    seed: int = 0,
    out: TextIO | None = None,
) -> list[DemoResult]:
    """Run both demo tasks, print their results and a summary; return the results.

    Parameters
    ----------
    quick : bool, default=False
        Fewer images (for tests): 80 digits and 10 crops per photo.
    n_digits : int, optional
        Digits to use (a stratified subset of the 1797, at least 40); default: all.
    n_crops : int, optional
        Crops per photo; default 60.
    precision, batch_size, device
        Passed to :class:`~sktransfer.PretrainedFeatureExtractor`;
        ``precision="auto"`` is bf16 on CPUs with native bf16, else fp32 (mixed
        precision on CUDA), as in the extractor.
    progress : bool, default=True
        Show a progress bar (on stderr) during extraction.
    seed : int, default=0
    out : text stream, default=sys.stdout

    Returns
    -------
    list of DemoResult
        One per task: digits, then crops.

    Examples
    --------
    Even the smallest run loads the default backbone and extracts features of
    about 50 images, which takes tens of seconds on a CPU, so it is not run here:

    >>> results = run_demo(quick=True, progress=False)  # doctest: +SKIP
    >>> [r.task for r in results]  # doctest: +SKIP
    ['digits', 'crops']

    The arguments are checked before anything is loaded (this part is cheap):

    >>> run_demo(n_digits=5)
    Traceback (most recent call last):
        ...
    ValueError: n_digits must be between 40 and 1797 (a quarter is the test split, at least one per class), got 5.
    """
    out = sys.stdout if out is None else out
    n_digits = n_digits or (QUICK_N_DIGITS if quick else DEFAULT_N_DIGITS)
    n_crops = n_crops or (QUICK_N_CROPS if quick else DEFAULT_N_CROPS)
    if not 40 <= n_digits <= 1797:
        raise ValueError(
            f"n_digits must be between 40 and 1797 (a quarter is the test split, at least one "
            f"per class), got {n_digits}."
        )
    if n_crops < _CV_FOLDS:
        raise ValueError(f"n_crops must be at least {_CV_FOLDS} (one per CV fold), got {n_crops}.")

    resolved_device = _runtime.resolve_device(device)
    start = time.perf_counter()
    extractor = PretrainedFeatureExtractor(
        precision=precision,
        batch_size=batch_size,
        device=str(resolved_device),
        verbose=int(progress),
    ).fit()
    load_seconds = time.perf_counter() - start
    batch = _runtime.resolve_batch_size(extractor.batch_size, extractor.device_)
    why = ""
    if precision == "auto" and extractor.device_.type == "cpu":
        why = " (auto: this CPU has native bf16)" if extractor.precision_ == "bf16" else " (auto: no native bf16 on this CPU)"
    print(
        "sktransfer demo: PretrainedFeatureExtractor() features + LogisticRegression, offline\n"
        f"backbone {extractor.backbone_.name} (loaded in {load_seconds:.1f} s), "
        f"device {extractor.device_.type}, precision {extractor.precision_}{why}, "
        f"batch size {batch}, "
        f"{torch.get_num_threads()} CPU threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        file=out,
        flush=True,
    )
    results = [
        _digits_task(extractor, n_digits, seed, out),
        _crops_task(extractor, n_crops, seed, out),
    ]
    total = time.perf_counter() - start
    print(f"\nSummary (total {total:.1f} s)\n{format_summary(results)}", file=out, flush=True)
    return results
