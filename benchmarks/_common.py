"""Helpers shared by the benchmarks: data, machine info, interleaved timing, peak RSS, tables.

Timing on a shared machine is noisy, so :func:`interleaved` runs every
configuration once per round, round after round, and keeps each one's best
rate: a burst of load from another process then hits all configurations alike
and the ratios taken from one run stay meaningful.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("SKTRANSFER_DATA", "/work/shared/data"))
HYMENOPTERA = DATA / "hymenoptera"
IMAGENET_SAMPLE = DATA / "imagenet-sample-100"


# --------------------------------------------------------------------------- data


def hymenoptera_paths(n: int | None = None) -> list[str]:
    """The hymenoptera train + val JPEGs, sorted; repeated cyclically when ``n`` exceeds them."""
    paths = sorted(str(p) for p in HYMENOPTERA.glob("*/*/*.jpg"))
    if not paths:
        raise FileNotFoundError(f"No JPEGs under {HYMENOPTERA}; see /work/shared/data/README.md.")
    if n is None:
        return paths
    return [paths[i % len(paths)] for i in range(n)]


def imagenet_sample() -> tuple[list[str], np.ndarray]:
    """Paths of imagenet-sample-100 and their ImageNet class indices (from labels.csv)."""
    with open(IMAGENET_SAMPLE / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [str(IMAGENET_SAMPLE / r["filename"]) for r in rows]
    return paths, np.array([int(r["class_index"]) for r in rows])


def write_synthetic_jpegs(
    folder: str | os.PathLike, n: int, size=(320, 240), seed: int = 0
) -> list[str]:
    """Write ``n`` JPEGs with smooth colour gradients plus noise (realistic file sizes)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:05d}.jpg"
        paths.append(str(path))
        if path.exists():
            continue
        a, b, c = rng.uniform(-1, 1, 3)
        base = np.stack([xx / w * 255 * a, yy / h * 255 * b, (xx + yy) / (w + h) * 255 * c], -1)
        img = np.clip(np.abs(base) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(path, quality=90)
    return paths


# --------------------------------------------------------------------------- machine


def machine_info() -> dict:
    import PIL
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": cpus,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "pillow": PIL.__version__,
        "load_avg_start": list(os.getloadavg()),
    }
    try:
        info["mkldnn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        info["mkldnn_bf16"] = None
    from sktransfer import _runtime

    cpu = _runtime.cpu_info()
    info["cpu_flags"] = cpu["flags"]  # of avx2, avx512f, avx512_bf16, amx_bf16, amx_tile
    info["native_bf16"] = cpu["native_bf16"]
    info["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
    auto = _runtime.resolve_precision("auto", torch.device("cpu"))
    info["precision_auto"] = _runtime.precision_name(auto)
    info["git_commit"] = git_commit()
    for mod in ("torchvision", "timm", "embetter"):
        try:
            info[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            info[mod] = None
    return info


def git_commit() -> str | None:
    """The repository's HEAD commit (with "+dirty" when the work tree has changes)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# --------------------------------------------------------------------------- timing


def interleaved(configs: dict[str, Callable[[], int]], rounds: int, log=print) -> dict[str, dict]:
    """Run each config once per round for ``rounds`` rounds; a config returns the items it did.

    Returns ``{name: {"best": items/s, "median": items/s, "runs": [items/s, ...]}}``. A config
    that raises is recorded with its error and skipped in later rounds.
    """
    results: dict[str, dict] = {name: {"runs": []} for name in configs}
    for r in range(rounds):
        for name, fn in configs.items():
            res = results[name]
            if "error" in res:
                continue
            t0 = time.perf_counter()
            try:
                n = fn()
            except Exception as exc:  # noqa: BLE001 - a failing peer must not stop the benchmark
                res["error"] = f"{type(exc).__name__}: {exc}"
                log(f"  [{name}] failed: {res['error']}")
                continue
            res["runs"].append(n / (time.perf_counter() - t0))
        log(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{k}={v['runs'][-1]:.1f}" for k, v in results.items() if v["runs"] and "error" not in v
        ))  # fmt: skip
    for res in results.values():
        res["best"] = max(res["runs"]) if res["runs"] else None
        res["median"] = float(np.median(res["runs"])) if res["runs"] else None
    return results


# --------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


class PeakRSS:
    """Peak resident memory of this process inside a ``with`` block, in MiB.

    On Linux the kernel's high-water mark (VmHWM) is reset on entry by writing
    5 to ``/proc/self/clear_refs`` and read on exit; where that is not
    possible a thread samples VmRSS every 2 ms instead (``method`` says which).
    """

    def __enter__(self):
        import threading

        self.method = "VmHWM"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "sampled"
        self.baseline_mb = current_rss_mb()
        self.peak_mb = self.baseline_mb
        self._stop = threading.Event()
        self._thread = None
        if self.method == "sampled":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak_mb = _status_mb("VmHWM")
        self.peak_mb = max(self.peak_mb, current_rss_mb())
        return False


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def run_child(args: list[str], timeout: float = 900) -> dict:
    """Run ``python <args>`` in a fresh process; its last stdout line is a JSON object."""
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- output


def format_table(rows: list[list], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        return f"{c:.2f}" if abs(c) < 10 else f"{c:.1f}"
    return str(c)


def save_json(obj: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path
