"""Throughput of one process against ``sktransfer.distributed.extract`` on a Dask LocalCluster.

Run from the repository root::

    .venv/bin/python benchmarks/scale.py [--quick] [--n-items N] [--rounds R]
        [--out benchmarks/results/scale.json]

One run measures, on the same images (hymenoptera JPEGs, the list repeated to
``--n-items``) and the default backbone (EfficientNet-Lite0, fp32, defaults):

(A) ``PretrainedFeatureExtractor().transform(paths)`` in this process, torch's
    default threads (one per core);
(A1) the same with ``torch.set_num_threads(1)``;
(B) ``extract(dask Series of paths)`` on a ``LocalCluster`` with 1 worker;
(C) the same with 2 workers;
(C') (C) with Dask's default worker environment for malloc.

(A1) is there because on a shared machine the threads of one process wait on
each other (each batch is split across them and joined); a process with one
thread does not, so (C) against (A) alone would mix Dask's overhead with that.

Workers are processes (``processes=True``, a Nanny each) with
``threads_per_worker=1``: one task at a time per worker, because torch already
spreads one batch over its own threads, and two tasks sharing those threads
would only contend. Torch's intra-op threads per worker are set to
``cores // n_workers`` through ``OMP_NUM_THREADS`` in the worker environment
(torch reads it at import): 1 worker gets every core, 2 workers on 2 cores get
1 thread each, so the workers never run more threads than there are cores.
Dask's Nanny would otherwise set ``OMP_NUM_THREADS=1`` for every worker (its
``distributed.nanny.pre-spawn-environ`` default), leaving a 1-worker cluster
on a single core.

Dask's nanny also sets ``MALLOC_TRIM_THRESHOLD_=65536`` for its workers, to
return freed memory to the system sooner. Setting it makes glibc stop adapting
its mmap threshold, so every large tensor of a forward pass is mapped and
unmapped again, page fault by page fault: (C') against (C) measures what that
costs.
(B) and (C) unset it (``dask.config.set`` of
``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_`` to ``None``);
(C') keeps it, to show the difference.

All clusters are started, and each worker loads the backbone once (a warm-up
call, timed apart), before the measured rounds. The configurations then run
interleaved, A-A1-B-C-C'-A-A1-..., and the table reports each one's median rate over
the rounds and its ratio to A's median from the same run: load from other
processes hits all three alike. Features of every configuration must equal A's within
``rtol=atol=1e-4`` (asserted).

On a machine with 2 cores, 2 workers cannot beat one process that already uses
both cores for its convolutions: what this measures is Dask's overhead
(scheduling, pickling paths in and features out, one task per partition) and
correctness. CPU seconds per image (this process, plus the worker processes for
B and C) are recorded too: less sensitive to other jobs than wall time. The
speed-up of scale-out comes from machines with more cores or more GPUs; ``docs/scale.md`` projects it from the per-image times measured here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402

RTOL = ATOL = 1e-4
TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
PARTITIONS_PER_WORKER = 4
# name -> (workers, keep Dask's MALLOC_TRIM_THRESHOLD_=65536 in the workers' environment)
CLUSTERS = {
    "dask 1 worker": (1, False),
    "dask 2 workers": (2, False),
    "dask 2 workers, Dask's malloc trim": (2, True),
}
NAMES = ("single process", "single process, 1 thread", *CLUSTERS)


def workers_cpu(pids) -> float:
    """User + system CPU seconds of the given worker processes so far."""
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


class LoadSampler:
    """The 1-minute load average every ``every`` seconds, in a thread, while in a ``with``."""

    def __init__(self, every: float = 5.0):
        self.every, self.samples = every, []

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def summary(self) -> dict:
        s = np.asarray(self.samples)
        return {"mean": float(s.mean()), "min": float(s.min()), "max": float(s.max()), "n": len(s)}


def start_cluster(n_workers: int, cores: int, dask_malloc_trim: bool):
    import dask
    from distributed import Client, LocalCluster

    threads = max(1, cores // n_workers)
    env = {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
    }
    # None unsets the nanny's default MALLOC_TRIM_THRESHOLD_=65536 (see the module docstring)
    trim = {} if dask_malloc_trim else {TRIM_KEY: None}
    with dask.config.set(trim):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            env=env,
            silence_logs=logging.ERROR,
        )
    client = Client(cluster, set_as_default=False)
    return cluster, client


def worker_settings(client) -> dict:
    def settings():
        import torch

        return torch.get_num_threads(), os.environ.get("MALLOC_TRIM_THRESHOLD_")

    got = sorted(client.run(settings).values())
    return {
        "torch_threads_per_worker": [t for t, _ in got],
        "MALLOC_TRIM_THRESHOLD_": [m for _, m in got],
    }


def dask_features(client, extractor, paths, n_workers: int) -> np.ndarray:
    import dask.dataframe as dd
    import pandas as pd

    from sktransfer.distributed import extract

    series = dd.from_pandas(pd.Series(paths), npartitions=PARTITIONS_PER_WORKER * n_workers)
    return client.compute(extract(series, extractor)).result().to_numpy()


def decode_cpu_s_per_image(extractor, paths) -> float:
    """CPU seconds per image of the input pipeline alone: open, decode, resize, crop, normalize.

    What a GPU worker still spends on its CPU cores per image, whatever the GPU's speed.
    """
    import torch

    from sktransfer._modality import as_source
    from sktransfer.io import make_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = make_dataset(as_source(paths, "image"), extractor.transform_)
        c0 = time.process_time()
        for i in range(len(dataset)):
            dataset[i]
        return (time.process_time() - c0) / len(dataset)
    finally:
        torch.set_num_threads(threads)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 items, 2 rounds")
    parser.add_argument("--n-items", type=int, default=None, help="default 256 (64 quick)")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (2 quick)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    n = args.n_items or (64 if args.quick else 256)
    rounds = args.rounds or (2 if args.quick else 3)
    out = args.out or str(
        Path(__file__).parent / "results" / ("scale_quick.json" if args.quick else "scale.json")
    )

    import dask
    import distributed
    import torch

    from sktransfer import PretrainedFeatureExtractor

    t_start = time.perf_counter()
    machine = _common.machine_info()
    machine.update(dask=dask.__version__, distributed=distributed.__version__)
    cores = int(machine["cpu_affinity"])
    paths = _common.hymenoptera_paths(n)
    print(f"{n} items ({len(set(paths))} distinct JPEGs), {rounds} rounds, {cores} cores, "
          f"load average {machine['load_avg_start']}")  # fmt: skip

    extractor = PretrainedFeatureExtractor()
    t0 = time.perf_counter()
    local = extractor.fit(paths)
    load_local_s = time.perf_counter() - t0

    clusters, setup = {}, {}
    for name, (k, trim) in CLUSTERS.items():
        t0 = time.perf_counter()
        cluster, client = start_cluster(k, cores, trim)
        started = time.perf_counter() - t0
        t0 = time.perf_counter()
        dask_features(client, extractor, paths[: 8 * k], k)  # every worker loads the backbone
        setup[name] = {
            "workers": k,
            "cluster_start_s": started,
            "first_call_s": time.perf_counter() - t0,
            **worker_settings(client),
        }
        clusters[name] = (cluster, client)
        print(f"  {name}: cluster {started:.1f} s, first call (backbone load) "
              f"{setup[name]['first_call_s']:.1f} s, {worker_settings(client)}")  # fmt: skip

    feats: dict[str, np.ndarray] = {}
    cpu = {name: {"s": 0.0, "items": 0} for name in NAMES}
    pids = {name: list(client.run(os.getpid).values()) for name, (_, client) in clusters.items()}

    def timed_cpu(name, fn) -> int:
        c0 = time.process_time() + workers_cpu(pids.get(name, []))
        fn()
        cpu[name]["s"] += time.process_time() + workers_cpu(pids.get(name, [])) - c0
        cpu[name]["items"] += len(paths)
        return len(paths)

    def single() -> int:
        return timed_cpu(
            "single process", lambda: feats.__setitem__("single process", local.transform(paths))
        )

    def single_1thread() -> int:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return timed_cpu("single process, 1 thread",
                             lambda: feats.__setitem__("single process, 1 thread", local.transform(paths)))  # fmt: skip
        finally:
            torch.set_num_threads(threads)

    def on_dask(name):
        k = CLUSTERS[name][0]

        def run() -> int:
            return timed_cpu(name, lambda: feats.__setitem__(
                name, dask_features(clusters[name][1], extractor, paths, k)))  # fmt: skip

        return run

    configs = {"single process": single, "single process, 1 thread": single_1thread}
    configs.update({name: on_dask(name) for name in CLUSTERS})
    with LoadSampler() as load:
        timings = _common.interleaved(configs, rounds)
    decode_s = decode_cpu_s_per_image(local, paths)
    machine["load_avg_end"] = list(os.getloadavg())
    for _, client in clusters.values():
        client.close()
    for cluster, _ in clusters.values():
        cluster.close()

    errors = {k: v["error"] for k, v in timings.items() if "error" in v}
    if errors:
        raise RuntimeError(f"configurations failed: {errors}")
    diffs = {}
    ref_feats = feats["single process"]
    for key in NAMES[1:]:
        assert feats[key].shape == ref_feats.shape, (key, feats[key].shape)
        np.testing.assert_allclose(feats[key], ref_feats, rtol=RTOL, atol=ATOL)
        diffs[key] = float(np.abs(feats[key] - ref_feats).max())

    ref = timings["single process"]["median"]
    rows, table = [], []
    spec = {
        "single process": (0, [torch.get_num_threads()]),
        "single process, 1 thread": (0, [1]),
        **{name: (k, setup[name]["torch_threads_per_worker"]) for name, (k, _) in CLUSTERS.items()},
    }
    for name, res in timings.items():
        workers, threads = spec[name]
        diff = diffs.get(name)
        cpu_ms = 1000 * cpu[name]["s"] / cpu[name]["items"]
        med = res["median"]
        row = {
            "config": name,
            "workers": workers,
            "torch_threads": threads,
            "partitions": PARTITIONS_PER_WORKER * workers if workers else None,
            "median_images_per_s": med,
            "best_images_per_s": res["best"],
            "ratio_to_single_median": med / ref,
            "ms_per_image_median": 1000 / med,
            "cpu_ms_per_image": cpu_ms,
            "overhead_ms_per_image_vs_single": 1000 / med - 1000 / ref if workers else None,
            "max_abs_diff_vs_single": diff,
        }
        rows.append(row)
        table.append([name, workers or "-", ",".join(map(str, threads)), round(med, 1),
                      round(res["best"], 1), f"{med / ref:.2f}x", round(1000 / med, 1), round(cpu_ms, 1),
                      "-" if diff is None else f"{diff:.1e}"])  # fmt: skip
    header = ["config", "workers", "torch threads", "median img/s", "best img/s",
              "vs single", "ms/img", "CPU ms/img", "max |diff|"]  # fmt: skip
    print()
    print(_common.format_table(table, header))
    per_image_s = 1 / ref
    cpu_per_image = cpu["single process"]["s"] / cpu["single process"]["items"]
    print(f"\nsingle process: {per_image_s * 1000:.1f} ms/image wall (median), "
          f"{cpu_per_image * 1000:.1f} ms/image CPU (all threads), of which decoding and "
          f"preprocessing {decode_s * 1000:.1f} ms CPU (measured alone, 1 thread); load average during rounds "
          f"{load.summary()['mean']:.1f} (min {load.summary()['min']:.1f}, max {load.summary()['max']:.1f}) "
          f"on {cores} cores; features equal within rtol=atol={RTOL}")  # fmt: skip
    result = {
        "table": rows,
        "single_process": {
            "s_per_image_median": per_image_s,
            "cpu_s_per_image": cpu_per_image,
            "decode_preprocess_cpu_s_per_image": decode_s,
            "backbone_load_s": load_local_s,
        },
        "clusters": setup,
        "correctness": {"rtol": RTOL, "atol": ATOL, "max_abs_diff": diffs, "pass": True},
        "timings": timings,
        "load_avg_during": load.summary(),
        "machine": machine,
        "settings": {
            "quick": args.quick,
            "n_items": n,
            "distinct_images": len(set(paths)),
            "rounds": rounds,
            "backbone": "efficientnet_lite0 (defaults: fp32, batch_size auto, num_workers auto)",
            "collection": "dask Series of paths (dd.from_pandas)",
            "partitions_per_worker": PARTITIONS_PER_WORKER,
            "threads_per_worker": 1,
            "torch_threads_rule": "OMP_NUM_THREADS = cores // n_workers in the worker env",
            "malloc": "MALLOC_TRIM_THRESHOLD_ unset in the workers (glibc default) unless the "
            "config name says Dask's malloc trim (Dask's nanny default, 65536)",
        },
        "total_seconds": time.perf_counter() - t_start,
    }
    print(f"wrote {_common.save_json(result, out)}")
    return result


if __name__ == "__main__":
    main()
