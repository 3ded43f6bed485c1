"""Resident memory of ``extract_to_shards`` over 100,000 image files stays flat.

Run from the repository root::

    .venv/bin/python benchmarks/shards_memory.py [--n 100000] [--shard-size 1000]
        [--image-size 32] [--input-size 32] [--batch-size 100] [--workdir DIR] [--keep]
        [--out benchmarks/results/scale_memory.json]

It writes ``--n`` small JPEGs (``--image-size`` px square, each different:
noise on a per-image colour) into a temporary folder, then runs
``extract_to_shards(paths, out, extractor, shard_size=...)`` in this process
with EfficientNet-Lite0 (pretrained weights) at a small input resolution
(``DataConfig(input_size=32, resize_size=None)``) and one torch thread, so
that 100,000 items take minutes on 2 CPU cores: the files, the decoding, the batching, the shards and
the manifest are the real ones, only the network sees 32x32 instead of 224x224.

A thread samples this process's resident set (VmRSS) every 0.2 s together
with the number of finished shards. The result reports the RSS when 10k, 50k
and 100k items are done, the peak RSS in each stretch, the least-squares slope
of RSS against items done after the first 10k (MiB per 10k items), the
kernel's high-water mark, and the size of the output. Flat means the slope is
about zero: memory does not grow with the number of items (the list of paths
and the items' JSON lines, O(n) but a few bytes each, are built before the
first shard and are part of the baseline).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402

CHECKPOINTS = (10_000, 50_000, 100_000)
# "Flat": the fitted growth over the run, beyond noise (allocator, Python object churn).
FLAT_SLOPE_MIB_PER_10K = 2.0


def write_tiny_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> list[str]:
    """``n`` distinct ``size`` x ``size`` JPEGs, 1,000 per subfolder; fast (no resizing)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:06d}.jpg"
        colour = rng.integers(0, 256, 3, dtype=np.uint8)
        noise = rng.integers(0, 64, (size, size, 1), dtype=np.uint8)
        Image.fromarray(colour // 2 + noise).save(path, quality=85)
        paths.append(str(path))
    return paths


class RSSSampler:
    """(seconds, VmRSS MiB, finished shards) every ``every`` s, in a thread."""

    def __init__(self, out: Path, every: float = 0.2):
        self.out, self.every, self.samples = out, every, []

    def __enter__(self):
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _shards_done(self) -> int:
        try:
            return sum(1 for e in os.scandir(self.out) if e.name.startswith("shard-"))
        except FileNotFoundError:
            return 0

    def _run(self):
        while True:
            self.samples.append(
                (time.perf_counter() - self.t0, _common.current_rss_mb(), self._shards_done())
            )
            if self._stop.wait(self.every):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._run_once()
        return False

    def _run_once(self):
        self.samples.append(
            (time.perf_counter() - self.t0, _common.current_rss_mb(), self._shards_done())
        )


def analyse(samples, shard_size: int, n: int) -> dict:
    t, rss, shards = (np.asarray(c, dtype=float) for c in zip(*samples))
    items = np.minimum(shards * shard_size, n)
    checkpoints = {}
    prev = 0
    for c in [c for c in CHECKPOINTS if c <= n] + ([n] if n not in CHECKPOINTS else []):
        hit = np.flatnonzero(items >= c)
        if not len(hit):
            continue
        i = int(hit[0])
        window = (items >= prev) & (items <= c)
        checkpoints[str(c)] = {
            "items_done": int(items[i]),
            "seconds": float(t[i]),
            "rss_mb": float(rss[i]),
            "peak_rss_mb_since_previous": float(rss[window].max()),
        }
        prev = c
    steady = items >= min(10_000, n // 10)
    slope = (
        float(np.polyfit(items[steady], rss[steady], 1)[0] * 10_000) if steady.sum() > 2 else None
    )
    return {
        "checkpoints": checkpoints,
        "slope_mib_per_10k_items": slope,
        "rss_min_mb_after_first_checkpoint": float(rss[steady].min()) if steady.any() else None,
        "rss_max_mb_after_first_checkpoint": float(rss[steady].max()) if steady.any() else None,
        "n_samples": len(samples),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch.set_num_threads (default 1)"
    )
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the images and shards")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "scale_memory.json")
    )
    args = parser.parse_args(argv)

    import torch

    from sktransfer import BackboneSpec, DataConfig, PretrainedFeatureExtractor
    from sktransfer.shards import extract_to_shards, load_shards

    t_start = time.perf_counter()
    # One intra-op thread: at 32x32 a batch is too small to split, and with other jobs on
    # the cores two threads waiting on each other were measured 20x slower (23 vs 442
    # items/s at load average 12 on 2 cores).
    torch.set_num_threads(args.torch_threads)
    machine = _common.machine_info()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sktransfer-shards-memory-"))
    print(
        f"{args.n} images of {args.image_size}px into {work}; load average {machine['load_avg_start']}"
    )
    try:
        t0 = time.perf_counter()
        paths = write_tiny_jpegs(work / "images", args.n, args.image_size)
        gen_s = time.perf_counter() - t0
        images_mb = sum(os.path.getsize(p) for p in paths[:1000]) / 1000 * args.n / 2**20
        print(f"  wrote {args.n} JPEGs in {gen_s:.1f} s ({images_mb:.0f} MiB of JPEG bytes)")

        spec = BackboneSpec(
            arch="efficientnet_lite0",
            data_config=DataConfig(input_size=args.input_size, resize_size=None),
        )
        extractor = PretrainedFeatureExtractor(spec, batch_size=args.batch_size)
        out = work / "shards"
        rss_before = _common.current_rss_mb()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        with _common.PeakRSS() as peak, RSSSampler(out) as sampler:
            extract_to_shards(paths, out, extractor, shard_size=args.shard_size)
        extract_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
        machine["load_avg_end"] = list(os.getloadavg())

        feats = load_shards(out, mmap=True)
        assert feats.shape[0] == args.n, feats.shape
        check = extractor.fit().transform(paths[:16] + paths[-16:])
        np.testing.assert_allclose(np.asarray(feats[list(range(16)) + list(range(args.n - 16, args.n))]),
                                   check, rtol=1e-4, atol=1e-4)  # fmt: skip
        out_bytes = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        stats = analyse(sampler.samples, args.shard_size, args.n)
    finally:
        t0 = time.perf_counter()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)  # minutes for 100k files on some file systems
        cleanup_s = time.perf_counter() - t0

    slope = stats["slope_mib_per_10k_items"]
    rows = [[f"{int(k):,}", v["items_done"], round(v["seconds"], 1), round(v["rss_mb"], 1),
             round(v["peak_rss_mb_since_previous"], 1)] for k, v in stats["checkpoints"].items()]  # fmt: skip
    print()
    print(
        _common.format_table(
            rows, ["checkpoint", "items done", "s", "RSS MiB", "peak RSS MiB in stretch"]
        )
    )
    print(f"\nslope after 10k: {slope:+.2f} MiB per 10k items; RSS before extraction {rss_before:.0f} MiB, "
          f"peak {peak.peak_mb:.0f} MiB ({peak.method}); output {out_bytes / 2**20:.0f} MiB "
          f"({feats.shape[1]} float32 features x {args.n}); {args.n / extract_s:.0f} items/s, "
          f"{cpu_s / args.n * 1000:.2f} ms CPU/item; load average end {machine['load_avg_end']}")  # fmt: skip
    result = {
        "n_items": args.n,
        "n_items_target": 100_000,
        "flat": slope is not None and abs(slope) <= FLAT_SLOPE_MIB_PER_10K,
        "flat_threshold_mib_per_10k": FLAT_SLOPE_MIB_PER_10K,
        **stats,
        "rss_before_extraction_mb": rss_before,
        "peak_rss_mb": peak.peak_mb,
        "peak_method": peak.method,
        "output_mb": out_bytes / 2**20,
        "output_shape": list(feats.shape),
        "input_jpeg_mb_estimate": images_mb,
        "generate_s": gen_s,
        "extract_s": extract_s,
        "extract_cpu_s": cpu_s,
        "cleanup_s": cleanup_s,
        "items_per_s": args.n / extract_s,
        "samples": [
            [round(t, 2), round(r, 1), s]
            for t, r, s in sampler.samples[:: max(1, len(sampler.samples) // 500)]
        ],
        "machine": machine,
        "settings": {
            "shard_size": args.shard_size,
            "image_size": args.image_size,
            "backbone": "efficientnet_lite0, pretrained",
            "data_config": f"DataConfig(input_size={args.input_size}, resize_size=None)",
            "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "sample_every_s": 0.2,
        },
        "total_seconds": time.perf_counter() - t_start,
    }
    print(f"wrote {_common.save_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
