"""Feature-extraction speed and memory of PretrainedFeatureExtractor against its references.

Run from the repository root::

    .venv/bin/python benchmarks/extract_throughput.py [--quick] [--n-images N]
        [--rounds R] [--out benchmarks/results/extract_throughput.json]

One run measures, on the same backbone (EfficientNet-Lite0):

(a) raw forward, fp32 eager, NCHW, best batch size of {1, 8, 16, 32}: the 1.0x reference;
(b) raw forward, the best of channels_last / bf16 autocast / both;
(c) ``PretrainedFeatureExtractor().transform(paths)``, defaults, JPEG decoding included;
(d) the same with ``precision="bf16"``;
(e) the textbook loop: Dataset + DataLoader(num_workers=0) + torchvision
    Resize(256, bicubic)/CenterCrop/ToTensor/Normalize, ``model(x)`` under no_grad, batch 32;
(f) embetter's ``ImageLoader`` + ``TimmEncoder`` (built offline, same weights).

All configurations run interleaved, round after round, and each keeps its best
rate (see ``_common.interleaved``), so ratios from one run share the same load.
It also sweeps ``batch_size`` x ``num_workers`` of our path, measures ImageNet
top-1 on imagenet-sample-100 (fp32 and bf16, and the references), and the peak
RSS growth of transforming 200 vs 2,000 generated JPEGs, one fresh process each.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402
import torch  # noqa: E402

BACKBONE = "efficientnet_lite0"
TIMM_NAME = "tf_efficientnet_lite0"
RAW_BATCHES = (1, 8, 16, 32)
# Batch 1 is the slowest for every variant (measured); (b) skips it to save time.
RAW_ALT_BATCHES = (8, 16, 32)
SWEEP_BATCHES = (8, 16, 32)
SWEEP_WORKERS = (0, 1)
# Allowed growth of 2,000 images over 200 beyond the larger output array.
MEMORY_SLACK_MB = 32.0


# --------------------------------------------------------------------------- configurations


def raw_config(model, batch: int, channels_last: bool, dtype):
    """Forward of pre-made tensors, pooled to features like the extractor's output."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    amp = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def run(n: int) -> int:
        done = 0
        with torch.inference_mode(), amp:
            while done < n:
                model(x).mean((2, 3))
                done += batch
        return done

    return run


def ours_config(ext, paths):
    def run(n: int) -> int:
        return len(ext.transform(paths[:n]))

    return run


class _PathDataset(torch.utils.data.Dataset):
    """What torchvision's ImageFolder does per item, over a given list of files."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from torchvision.datasets.folder import default_loader

        return self.transform(default_loader(self.paths[i])), 0


def textbook_transform():
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize((0.5,) * 3, (0.5,) * 3),
    ])  # fmt: skip


def textbook_features(model, paths) -> np.ndarray:
    loader = torch.utils.data.DataLoader(
        _PathDataset(paths, textbook_transform()), batch_size=32, num_workers=0
    )
    out = []
    with torch.no_grad():
        for x, _ in loader:
            out.append(model(x).mean((2, 3)).numpy())
    return np.concatenate(out)


def textbook_config(model, paths):
    def run(n: int) -> int:
        return len(textbook_features(model, paths[:n]))

    return run


def build_embetter(backbone):
    """embetter's ImageLoader + TimmEncoder pipeline on our Lite0 weights, without a download.

    ``TimmEncoder.__init__`` calls ``timm.create_model(name, pretrained=True)``;
    we let it run with ``pretrained=False`` and copy our weights into the
    model it built (same timm modules, same parameter order), so everything
    else (its data config, transform and per-image loop) is embetter's own.
    """
    import timm
    from embetter.vision import ImageLoader, TimmEncoder
    from sklearn.pipeline import make_pipeline

    create = timm.create_model

    def offline_create(name, pretrained=False, **kwargs):
        return create(name, pretrained=False, **kwargs)

    timm.create_model = offline_create
    try:
        enc = TimmEncoder(name=TIMM_NAME)
    finally:
        timm.create_model = create
    src = [(k, v) for k, v in backbone.state_dict().items() if not k.startswith("classifier.")]
    dst = list(enc.model.state_dict().items())
    if len(src) != len(dst) or any(a.shape != b.shape for (_, a), (_, b) in zip(src, dst)):
        raise RuntimeError("embetter's timm model does not match our backbone's parameters")
    enc.model.load_state_dict({k: v for (k, _), (_, v) in zip(dst, src)})
    # Check the copy: in eval mode both give the same pooled features.
    x = torch.randn(2, 3, 224, 224)
    was_training = enc.model.training
    with torch.inference_mode():
        ref = backbone(x).mean((2, 3))
        got = enc.model.eval()(x)
    enc.model.train(was_training)  # TimmEncoder never calls eval(); keep what it does
    if not torch.allclose(ref, got, atol=1e-4):
        raise RuntimeError("copied weights do not reproduce our backbone's features")
    return make_pipeline(ImageLoader(convert="RGB"), enc), was_training


def embetter_config(pipe, paths):
    # fit_transform: with scikit-learn >= 1.6, Pipeline.transform refuses embetter's steps as
    # "not fitted" (they set no fitted attributes); fitting them is a no-op.
    def run(n: int) -> int:
        return len(pipe.fit_transform(paths[:n]))

    return run


# --------------------------------------------------------------------------- memory child


def memory_child(n: int, folder: str) -> None:
    """Peak RSS growth of one default transform of ``n`` images (run in a fresh process)."""
    from sktransfer import PretrainedFeatureExtractor

    paths = sorted(str(p) for p in Path(folder).glob("*.jpg"))[:n]
    ext = PretrainedFeatureExtractor().fit()
    # Loading the weights peaks higher than a transform does, so the high-water
    # mark is reset here (or, where that is not allowed, RSS is sampled). The
    # growth includes what any transform needs (one batch of activations,
    # kernels, allocator pools): the same for both counts.
    with _common.PeakRSS() as peak:
        t0 = time.perf_counter()
        out = ext.transform(paths)
        seconds = time.perf_counter() - t0
    print(json.dumps({
        "n_images": len(paths),
        "baseline_rss_mb": peak.baseline_mb,
        "peak_mb": peak.peak_mb,
        "growth_mb": peak.peak_mb - peak.baseline_mb,
        "method": peak.method,
        "output_mb": out.nbytes / 2**20,
        "images_per_s": len(paths) / seconds,
    }))  # fmt: skip


def measure_memory(counts: tuple[int, int], log) -> dict:
    small, large = counts
    with tempfile.TemporaryDirectory(prefix="sktransfer-bench-") as tmp:
        t0 = time.perf_counter()
        _common.write_synthetic_jpegs(tmp, large, size=(320, 240))
        log(f"  wrote {large} JPEGs 320x240 in {time.perf_counter() - t0:.1f}s")
        res = {}
        for n in (small, large):
            res[str(n)] = _common.run_child([__file__, "--_memory-child", str(n), tmp])
            log(f"  {n} images: peak RSS growth {res[str(n)]['growth_mb']:.1f} MiB "
                f"({res[str(n)]['images_per_s']:.1f} img/s)")  # fmt: skip
    extra = res[str(large)]["growth_mb"] - res[str(small)]["growth_mb"]
    output_extra = res[str(large)]["output_mb"] - res[str(small)]["output_mb"]
    return {
        "runs": res,
        "difference_mb": extra,
        "output_difference_mb": output_extra,
        "slack_mb": MEMORY_SLACK_MB,
        "pass": extra <= output_extra + MEMORY_SLACK_MB,
    }


# --------------------------------------------------------------------------- top-1


def top1(features: np.ndarray, classifier, labels: np.ndarray) -> float:
    with torch.inference_mode():
        logits = classifier(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
    return float((logits.argmax(1).numpy() == labels).mean())


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts, one round: a smoke run")
    p.add_argument("--n-images", type=int, default=None, help="JPEGs per timed pipeline run")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    p.add_argument(
        "--no-sweep", action="store_true", help="skip the batch_size x num_workers sweep"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS measurement")
    p.add_argument("--out", default="benchmarks/results/extract_throughput.json")
    p.add_argument("--_memory-child", nargs=2, metavar=("N", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._memory_child:
        return memory_child(int(args._memory_child[0]), args._memory_child[1])

    n_images = args.n_images or (8 if args.quick else 48)
    rounds = args.rounds or (1 if args.quick else 5)
    # Tensors per timed raw-forward slice; a slice runs whole batches, at least one.
    n_raw = 8 if args.quick else 32
    mem_counts = (32, 320) if args.quick else (200, 2000)
    n_top1 = 20 if args.quick else None
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:5.0f}s] {msg}", flush=True)

    from sktransfer import PretrainedFeatureExtractor, _runtime
    from sktransfer.backbones import load_backbone

    torch.manual_seed(0)
    info = _common.machine_info()
    log(f"machine: {info['cpu_model']}, {info['cpu_affinity']} CPUs, torch {info['torch']} "
        f"({info['torch_threads']} threads), load {info['load_avg_start']}")  # fmt: skip
    log(f"CPU flags: {', '.join(info['cpu_flags']) or '-'}; native bf16: {info['native_bf16']}"
        f"{' (ONEDNN_MAX_CPU_ISA=' + info['onednn_max_cpu_isa'] + ')' if info['onednn_max_cpu_isa'] else ''}; "
        f"precision='auto' chose {info['precision_auto']}")  # fmt: skip

    paths = _common.hymenoptera_paths(n_images)
    for path in set(paths):  # into the page cache, so no configuration pays for the disk
        Path(path).read_bytes()
    cpu = torch.device("cpu")
    defaults = {
        "batch_size": _runtime.resolve_batch_size("auto", cpu),
        "num_workers": _runtime.resolve_num_workers("auto"),
    }

    raw_model = load_backbone(BACKBONE).eval().requires_grad_(False)
    ours = PretrainedFeatureExtractor().fit()
    ours_bf16 = PretrainedFeatureExtractor(precision="bf16").fit()
    textbook_model = copy.deepcopy(raw_model)  # NCHW fp32, like the textbook

    configs: dict[str, object] = {}
    variants = {
        "fp32": (False, None),
        "channels_last": (True, None),
        "bf16": (False, torch.bfloat16),
        "channels_last+bf16": (True, torch.bfloat16),
    }
    for vname, (cl, dtype) in variants.items():
        model = raw_model if vname == "fp32" else copy.deepcopy(raw_model)
        for b in RAW_BATCHES if vname == "fp32" else RAW_ALT_BATCHES:
            configs[f"raw {vname} b{b}"] = raw_config(model, b, cl, dtype)
    configs["(c) ours default"] = ours_config(ours, paths)
    configs["(d) ours bf16"] = ours_config(ours_bf16, paths)
    configs["(e) textbook"] = textbook_config(textbook_model, paths)
    embetter_note = ""
    try:
        pipe, embetter_training = build_embetter(raw_model)
        embetter_state = copy.deepcopy(pipe[-1].model.state_dict())
        configs["(f) embetter"] = embetter_config(pipe, paths)
        if embetter_training:
            embetter_note = "TimmEncoder leaves the model in train mode (BatchNorm on batch stats)"
    except Exception as exc:  # noqa: BLE001 - report why, keep the rest of the benchmark
        pipe, embetter_note = None, f"not run: {type(exc).__name__}: {exc}"
        log(f"embetter: {embetter_note}")
    # bf16 without native support is emulated and many times slower: sweep it only where native
    sweep_precisions = ("fp32", "bf16") if info["native_bf16"] else ("fp32",)
    if not args.no_sweep:
        for prec in sweep_precisions:
            for w in SWEEP_WORKERS:
                for b in SWEEP_BATCHES:
                    ext = PretrainedFeatureExtractor(batch_size=b, num_workers=w, precision=prec)
                    configs[f"sweep {prec} b{b} w{w}"] = ours_config(ext.fit(), paths)

    log(f"built; warm-up of {len(configs)} configurations")
    for name, fn in configs.items():
        fn(1 if name.startswith("raw") else 4)
    log(f"timing: {rounds} interleaved round(s), >= {n_raw} tensors per raw slice, "
        f"{n_images} JPEGs per pipeline run")  # fmt: skip
    timings = _common.interleaved(
        {
            k: functools.partial(fn, n_raw if k.startswith("raw") else n_images)
            for k, fn in configs.items()
        },
        rounds,
        log=log,
    )

    log("top-1 on imagenet-sample-100")
    tpaths, labels = _common.imagenet_sample()
    if n_top1:
        tpaths, labels = tpaths[:n_top1], labels[:n_top1]
    clf = raw_model.classifier
    accuracy = {
        "(c) ours default": top1(ours.transform(tpaths), ours.backbone_.classifier, labels),
        "(d) ours bf16": top1(ours_bf16.transform(tpaths), ours_bf16.backbone_.classifier, labels),
        "(e) textbook": top1(textbook_features(textbook_model, tpaths), clf, labels),
    }
    if pipe is not None and "error" not in timings.get("(f) embetter", {"error": 1}):
        accuracy["(f) embetter"] = top1(pipe.fit_transform(tpaths), clf, labels)
        # The same pipeline after model.eval(), to show what train-mode BatchNorm costs. Its
        # forward passes in train mode have moved the BatchNorm running statistics, so the
        # pristine weights go back in first.
        encoder = pipe[-1].model
        encoder.load_state_dict(embetter_state)
        encoder.eval()
        accuracy["(f) embetter, model.eval()"] = top1(pipe.fit_transform(tpaths), clf, labels)
    log("  " + ", ".join(f"{k}={v:.3f}" for k, v in accuracy.items()))

    memory = None
    if not args.no_memory:
        log(
            f"peak RSS growth, {mem_counts[0]} vs {mem_counts[1]} generated JPEGs (fresh process each)"
        )
        memory = measure_memory(mem_counts, log)

    defaults["precision"] = ours.precision_
    result = summarize(timings, accuracy, memory, defaults, embetter_note, len(tpaths),
                       native_bf16=info["native_bf16"])  # fmt: skip
    result.update(
        machine={**info, "load_avg_end": list(os.getloadavg())},
        settings={
            "quick": args.quick,
            "n_images": n_images,
            "rounds": rounds,
            "raw_slice": n_raw,
            "memory_counts": mem_counts,
            "top1_images": len(tpaths),
            "defaults": defaults,
        },  # fmt: skip
        timings=timings,
        total_seconds=time.perf_counter() - t_start,
    )
    print_report(result)
    out = _common.save_json(result, args.out)
    log(f"\nsaved {out} ({result['total_seconds']:.0f}s)")
    return result


def summarize(timings, accuracy, memory, defaults, embetter_note, n_top1, native_bf16) -> dict:
    def best(name):
        return timings.get(name, {}).get("best")

    def pick(prefix):
        cands = {k: v["best"] for k, v in timings.items() if k.startswith(prefix) and v.get("best")}
        k = max(cands, key=cands.get)
        return k, cands[k]

    ref_name, ref = pick("raw fp32 ")
    alt_name, alt = max(
        (pick(f"raw {v} b") for v in ("channels_last", "bf16", "channels_last+bf16")),
        key=lambda t: t[1],
    )
    rows = [
        ("(a) raw forward fp32 eager", ref_name.split()[-1], ref, None, ""),
        ("(b) raw forward, best of channels_last/bf16", alt_name.removeprefix("raw "), alt, None, ""),
        ("(c) ours default", f"b{defaults['batch_size']} w{defaults['num_workers']} "
         f"auto={defaults['precision']}",
         best("(c) ours default"), accuracy.get("(c) ours default"), "JPEG decode included"),
        ("(d) ours precision='bf16'", f"b{defaults['batch_size']} w{defaults['num_workers']} bf16",
         best("(d) ours bf16"), accuracy.get("(d) ours bf16"), ""),
        ("(e) textbook DataLoader loop", "b32 w0 fp32", best("(e) textbook"),
         accuracy.get("(e) textbook"), ""),
        ("(f) embetter ImageLoader+TimmEncoder", "b1 fp32", best("(f) embetter"),
         accuracy.get("(f) embetter"), embetter_note or timings.get("(f) embetter", {}).get("error", "")),
    ]  # fmt: skip
    eval_acc = accuracy.get("(f) embetter, model.eval()")
    if eval_acc is not None:
        c, cfg, r, acc, note = rows[-1]
        rows[-1] = (c, cfg, r, acc, f"{note}; top-1 {eval_acc:.3f} after model.eval()")
    # Medians of the same configurations, a check on the best-of figures under noisy load.
    keys = [ref_name, alt_name, "(c) ours default", "(d) ours bf16", "(e) textbook", "(f) embetter"]
    medians = [timings.get(k, {}).get("median") for k in keys]
    table = [
        {"case": c, "config": cfg, "images_per_s": r, "ratio_to_a": (r / ref if r else None),
         "median_images_per_s": med, "median_ratio_to_a": (med / medians[0] if med else None),
         "top1": acc, "note": note}
        for (c, cfg, r, acc, note), med in zip(rows, medians)
    ]  # fmt: skip
    sweep = {
        k.removeprefix("sweep "): v["best"] for k, v in timings.items() if k.startswith("sweep")
    }
    emb, d_rate = best("(f) embetter"), best("(d) ours bf16")
    acc32, acc16 = accuracy.get("(c) ours default"), accuracy.get("(d) ours bf16")
    # The acceptance: at least the raw fp32 forward on a CPU without native bf16,
    # at least 1.5x it where bf16 is native (precision="auto" then extracts in bf16).
    need = 1.5 if native_bf16 else 1.0
    targets = {
        "ours_default_vs_raw_fp32": {"value": best("(c) ours default") / ref,
                                     "target": f">= {need}"},  # fmt: skip
        "ours_bf16_vs_embetter": {"value": d_rate / emb if emb else None, "target": ">= 2.5"},
        "top1_bf16_minus_fp32": {"value": acc16 - acc32, "target": "|.| <= 0.01"},
    }
    targets["ours_default_vs_raw_fp32"]["pass"] = (
        targets["ours_default_vs_raw_fp32"]["value"] >= need
    )
    v = targets["ours_bf16_vs_embetter"]["value"]
    targets["ours_bf16_vs_embetter"]["pass"] = None if v is None else v >= 2.5
    targets["top1_bf16_minus_fp32"]["pass"] = abs(acc16 - acc32) <= 0.01 + 1e-9
    med = {
        k: timings.get(k, {}).get("median")
        for k in ("(c) ours default", "(d) ours bf16", "(f) embetter")
    }
    targets["ours_default_vs_raw_fp32"]["median"] = med["(c) ours default"] / medians[0]
    if med["(f) embetter"]:
        targets["ours_bf16_vs_embetter"]["median"] = med["(d) ours bf16"] / med["(f) embetter"]
    if memory is not None:
        targets["memory_large_minus_small"] = {
            "value": memory["difference_mb"],
            "target": f"<= output growth {memory['output_difference_mb']:.1f} + {MEMORY_SLACK_MB:.0f} MiB",
            "pass": memory["pass"],
        }
    return {"table": table, "sweep": sweep, "top1": accuracy, "top1_images": n_top1,
            "memory": memory, "targets": targets}  # fmt: skip


def _ratio(x):
    return None if x is None else f"{x:.2f}x"


def print_report(result: dict) -> None:
    rows = [
        [r["case"], r["config"], r["images_per_s"], _ratio(r["ratio_to_a"]),
         _ratio(r["median_ratio_to_a"]), None if r["top1"] is None else f"{r['top1']:.3f}", r["note"]]
        for r in result["table"]
    ]  # fmt: skip
    m = result["machine"]
    print(f"\nEfficientNet-Lite0 feature extraction, {m['cpu_affinity']} CPUs ({m['cpu_model']}; "
          f"flags {', '.join(m.get('cpu_flags', [])) or '-'}; native bf16 {m.get('native_bf16')}; "
          f"precision='auto' -> {m.get('precision_auto')}), commit {m.get('git_commit')}, "
          f"torch {m['torch']}, {m['torch_threads']} threads; best of {result['settings']['rounds']} "
          f"interleaved rounds, {result['settings']['n_images']} hymenoptera JPEGs per pipeline run; "
          f"top-1 on {result['top1_images']} imagenet-sample-100 images")  # fmt: skip
    print(_common.format_table(
        rows, ["case", "config", "img/s", "vs (a)", "median vs (a)", "top-1", "note"]
    ))  # fmt: skip

    raw = {k: v["best"] for k, v in result["timings"].items() if k.startswith("raw")}
    if raw:
        print("\nraw forward img/s by batch size")
        variants = list(dict.fromkeys(k.split()[1] for k in raw))
        print(_common.format_table(
            [[v] + [raw.get(f"raw {v} b{b}") for b in RAW_BATCHES] for v in variants],
            ["variant"] + [f"b{b}" for b in RAW_BATCHES],
        ))  # fmt: skip
    if result["sweep"]:
        print("\nours (from JPEG) img/s: batch_size x num_workers")
        rows = []
        for prec in ("fp32", "bf16"):
            if not any(k.startswith(prec) for k in result["sweep"]):
                continue
            for w in SWEEP_WORKERS:
                rows.append([f"{prec} num_workers={w}"]
                            + [result["sweep"].get(f"{prec} b{b} w{w}") for b in SWEEP_BATCHES])  # fmt: skip
        print(_common.format_table(rows, ["config"] + [f"batch {b}" for b in SWEEP_BATCHES]))
    if result["memory"]:
        mem = result["memory"]
        print("\npeak RSS growth during transform (fresh process each, default settings)")
        print(_common.format_table(
            [[n, r["growth_mb"], r["output_mb"], r["images_per_s"]] for n, r in mem["runs"].items()],
            ["images", "growth MiB", "output MiB", "img/s"],
        ))  # fmt: skip
        print(f"difference: {mem['difference_mb']:.1f} MiB (output arrays differ by "
              f"{mem['output_difference_mb']:.1f} MiB)")  # fmt: skip
    print("\ntargets")
    for name, t in result["targets"].items():
        val = t["value"]
        val = "-" if val is None else f"{val:.3f}"
        status = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
        extra = f", median {t['median']:.3f}" if t.get("median") is not None else ""
        print(f"  {status}  {name} = {val} (target {t['target']}{extra})")


if __name__ == "__main__":
    main()
