"""Sweep of the backbone zoo: the smallest model of every timm module and one model of
every torchvision classification family, each with random weights.

For each: build it as a sktransfer backbone, extract features of two small random
images and compare them with the library's own pre-logits on the same tensor (timm:
``forward_head(forward_features(x), pre_logits=True)``; torchvision: the input of the
final classification layer, seen through a forward pre-hook on the untouched model);
then one training step at ``unfreeze=1`` (sktransfer's ``TransferNet``: the bottom
stages frozen) and check that only the top stage and the new head changed.

Results: a table on stdout and ``benchmarks/results/backbone_zoo.json``.

    python benchmarks/backbone_zoo.py [--size 64] [--max-params 100e6] [--only timm|torchvision]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common  # noqa: E402

from sktransfer import DataConfig  # noqa: E402
from sktransfer._sources import timm as timm_source  # noqa: E402
from sktransfer._sources import torchvision as tv_source  # noqa: E402
from sktransfer.finetune import TransferNet  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "backbone_zoo.json"


def _n_params_meta(build) -> float:
    try:
        with torch.device("meta"):
            m = build()
        return float(sum(p.numel() for p in m.parameters()))
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta: rank it last
        return float("inf")


def timm_candidates() -> list[tuple[str, str]]:
    """(module, smallest model) per timm module, test_* models first, by parameter count."""
    import timm

    picks = []
    for module in timm.list_modules():
        names = timm.list_models(module=module)
        if not names:
            continue
        tests = [n for n in names if n.startswith("test_")]
        pool = tests or names
        sizes = {n: _n_params_meta(lambda n=n: timm.create_model(n, pretrained=False)) for n in pool}
        picks.append((module, min(pool, key=lambda n: (sizes[n], n))))
    return picks


def tv_candidates() -> list[tuple[str, str]]:
    """(family, smallest model) per torchvision classification builder module."""
    import torchvision

    families: dict[str, list[str]] = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        fn = torchvision.models.get_model_builder(name)
        families.setdefault(fn.__module__.rpartition(".")[2], []).append(name)
    picks = []
    for family, names in sorted(families.items()):
        sizes = {
            n: _n_params_meta(lambda n=n: torchvision.models.get_model(n, weights=None)) for n in names
        }
        picks.append((family, min(names, key=lambda n: (sizes[n], n))))
    return picks


def _build_timm(name, size):
    import timm

    model = None
    for kw in ({"img_size": size}, {}):
        try:
            model = timm.create_model(name, pretrained=False, **kw).eval()
            break
        except Exception:  # noqa: BLE001 - this model takes no img_size, or not this one
            continue
    if model is None:
        model = timm.create_model(name, pretrained=False).eval()
    cfg = timm_source.data_config(model)
    s = size
    try:
        x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.forward_head(model.forward_features(x), pre_logits=True)
    except Exception:  # noqa: BLE001 - the model wants its own input size
        model = timm.create_model(name, pretrained=False).eval()
        cfg = timm_source.data_config(model)
        s = cfg.input_size
    bb = timm_source.wrap(model, f"timm/{name}", DataConfig(input_size=s, in_chans=cfg.in_chans))

    def reference(t):
        return model.forward_head(model.forward_features(t), pre_logits=True)

    return model, bb, reference, s


def _build_tv(name, size):
    import torchvision

    model = torchvision.models.get_model(name, weights=None).eval()
    s = 299 if name.startswith("inception") else size
    if name.startswith(("vit_", "swin", "maxvit")):
        s = 224
    try:
        x = torch.randn(1, 3, s, s)
        with torch.no_grad():
            model(x)
    except Exception:  # noqa: BLE001
        s = 224
    bb = tv_source.wrap(model, f"torchvision/{name}", DataConfig(input_size=s))
    final = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]

    def reference(t):
        seen = {}
        h = final.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
        try:
            model(t)
        finally:
            h.remove()
        return seen["x"]

    return model, bb, reference, s


def _pool(t):
    return t.mean((2, 3)) if t.ndim == 4 else t.flatten(1)


def check(source, name, size, max_params) -> dict:
    row = {"source": source, "model": name}
    t0 = time.time()
    try:
        model, bb, reference, s = (_build_timm if source == "timm" else _build_tv)(name, size)
    except Exception as exc:  # noqa: BLE001 - report every failure, keep sweeping
        row.update(result=f"fail: build ({type(exc).__name__}: {str(exc)[:120]})", seconds=time.time() - t0)
        return row
    n = sum(p.numel() for p in model.parameters())
    row.update(params=n, input_size=s, stages=len(bb.stages), split=getattr(bb, "split_error", None) is None)
    if n > max_params:
        row.update(result="skipped: size", seconds=time.time() - t0)
        return row
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            ours, ref = _pool(bb.eval()(x)).double(), _pool(reference(x)).double()
        diff = (ours - ref).abs().max().item()
        cos = torch.nn.functional.cosine_similarity(ours, ref, dim=1)
        # rows that are zero in both (a ReLU output of random weights) agree exactly
        # and so do identical rows whose norms are too small for cosine_similarity's eps
        same = (ours == ref).all(1)
        cos = torch.where(same, torch.ones_like(cos), cos).min().item()
        row.update(max_abs_diff=diff, min_cosine=cos)
        ok_features = ours.shape == ref.shape and cos >= 0.999 and torch.allclose(ours, ref, 1e-4, 1e-4)
    except Exception as exc:  # noqa: BLE001
        row.update(result=f"fail: features ({type(exc).__name__}: {str(exc)[:120]})", seconds=time.time() - t0)
        return row
    try:
        ok_train, note = _one_step(bb, x, ours.shape[1])
    except Exception as exc:  # noqa: BLE001
        ok_train, note = False, f"{type(exc).__name__}: {str(exc)[:120]}"
    row["result"] = "pass" if ok_features and ok_train else (
        "fail: features" if not ok_features else f"fail: fine-tune ({note})"
    )
    row["top_group_trained"] = note != "top group unchanged"
    row["seconds"] = time.time() - t0
    return row


def _one_step(bb, x, n_features) -> tuple[bool, str]:
    """One AdamW step at unfreeze=1: the bottom stages must not change, the head must."""
    head = nn.Linear(n_features, 2)
    net = TransferNet(bb, head, "avg", n_frozen=len(bb.stages) - 1).train()
    before = [[p.detach().clone() for p in st.parameters()] for st in bb.stages]
    head0 = head.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    loss = nn.functional.cross_entropy(net(x), torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    for i, st in enumerate(bb.stages[:-1]):
        if any(not torch.equal(a, b) for a, b in zip(before[i], st.parameters())):
            return False, f"frozen stage {bb.stage_names[i]} changed"
    if torch.equal(head0, head.weight):
        return False, "head unchanged"
    top = [not torch.equal(a, b) for a, b in zip(before[-1], bb.stages[-1].parameters())]
    if before[-1] and not any(top):
        return True, "top group unchanged"
    return True, "ok"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="input side where the model allows it")
    ap.add_argument("--max-params", type=float, default=100e6)
    ap.add_argument("--only", choices=["timm", "torchvision"])
    ap.add_argument(
        "--update", help="comma-separated models to re-check, replacing their rows in the saved JSON"
    )
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    if args.update:
        return _update(args)
    todo = []
    if args.only != "torchvision":
        todo += [("timm", m, n) for m, n in timm_candidates()]
    if args.only != "timm":
        todo += [("torchvision", f, n) for f, n in tv_candidates()]
    rows = []
    for source, family, name in todo:
        torch.manual_seed(0)
        row = {"family": family, **check(source, name, args.size, args.max_params)}
        rows.append(row)
        print(
            f"{source:11s} {family:24s} {name:36s} {row.get('result')} "
            f"{row.get('max_abs_diff', float('nan')):.2e} {row['seconds']:.1f}s",
            flush=True,
        )
    _report(rows, args)


def _update(args):
    import json

    saved = json.loads(OUT.read_text())
    wanted = set(args.update.split(","))
    rows = saved["rows"]
    for i, r in enumerate(rows):
        if r["model"] in wanted:
            torch.manual_seed(0)
            rows[i] = {"family": r["family"], **check(r["source"], r["model"], args.size, args.max_params)}
            rows[i]["rerun"] = True
            print(r["model"], rows[i]["result"], flush=True)
    _report(rows, args)


def _report(rows, args):
    header = ["source", "family", "model", "params", "stages", "result", "max_abs_diff", "min_cosine", "s"]
    table = [
        [r["source"], r["family"], r["model"], r.get("params"), r.get("stages"), r["result"],
         None if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}",
         None if r.get("min_cosine") is None else f"{r['min_cosine']:.6f}", r["seconds"]]
        for r in rows
    ]
    print(_common.format_table(table, header))
    summary = {}
    for source in ("timm", "torchvision"):
        sub = [r for r in rows if r["source"] == source]
        if sub:
            summary[source] = {
                "families": len(sub),
                "pass": sum(r["result"] == "pass" for r in sub),
                "skipped_size": sum(r["result"] == "skipped: size" for r in sub),
                "split_into_stages": sum(bool(r.get("split")) for r in sub if r["result"] == "pass"),
            }
    print(summary)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    _common.save_json(
        {"commit": commit, "machine": _common.machine_info(), "args": vars(args),
         "pass_rate": {k: round(v["pass"] / v["families"], 3) for k, v in summary.items()},
         "summary": summary, "rows": rows},
        OUT,
    )


if __name__ == "__main__":
    main()
