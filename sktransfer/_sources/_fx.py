"""Split a traced network into stages that each take and give one tensor (torch.fx).

Shared by the timm and torchvision adapters. The network is traced once (the
libraries' own FX tracing rules: leaf modules and wrapped functions); each node
that uses parameters belongs to a *group* (timm's ``group_matcher``, or the
torchvision model's declared blocks); the graph is cut between groups wherever a
single tensor carries everything the rest of the graph needs. Each piece is a
``GraphModule`` holding the original modules and parameters (shared, not copied),
so the stages run exactly the model's own code in the model's own order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .._backbone import Backbone, DataConfig

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)


def mark_features(x):
    """Identity; marks where a model's features end (before its pooling) in a traced graph.

    Examples
    --------
    >>> mark_features(3)
    3
    """
    return x


class Tracer(fx.Tracer):
    """``fx.Tracer`` for one input shape.

    ``leaf_types`` (a library's no-trace modules, stochastic depth) stay whole.
    Python control flow on a traced value (``if H % window:``, a size check)
    is decided by running the graph traced so far on the example input, so a
    model traces for the input size it will be fed (its data config's).
    """

    def __init__(self, leaf_types=(), autowrap_functions=(), autowrap_modules=(math,)):
        super().__init__(
            autowrap_modules=tuple(autowrap_modules),
            autowrap_functions=(mark_features, *autowrap_functions),
        )
        self.leaf_types = tuple(leaf_types)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, qualname)

    def trace_with(self, root: nn.Module, example: torch.Tensor) -> fx.Graph:
        self._example, self._values = example, {}
        try:
            return self.trace(root)
        finally:
            del self._example, self._values

    def to_bool(self, obj: fx.Proxy) -> bool:
        if not hasattr(self, "_values"):
            return super().to_bool(obj)
        return bool(self._value(obj.node))

    # while a value is computed, modules and attributes behave as outside tracing
    _concrete = False

    def call_module(self, m, forward, args, kwargs):
        if self._concrete:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._concrete:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def _value(self, node: fx.Node):
        self._concrete = True
        try:
            return self._run_to(node)
        finally:
            self._concrete = False

    def _run_to(self, node: fx.Node):
        """Run the nodes recorded so far (each once) up to ``node`` on the example."""
        values = self._values
        with torch.no_grad():
            for n in self.graph.nodes:
                if n in values:
                    if n is node:
                        break
                    continue
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: values[a])
                if n.op == "placeholder":
                    values[n] = self._example
                elif n.op == "get_attr":
                    values[n] = getattr_path(self.root, n.target)
                elif n.op == "call_function":
                    values[n] = n.target(*args, **kwargs)
                elif n.op == "call_method":
                    values[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
                elif n.op == "call_module":
                    values[n] = self.root.get_submodule(n.target)(*args, **kwargs)
                if n is node:
                    break
        return values[node]


def trace(root: nn.Module, tracer: Tracer, example: torch.Tensor) -> fx.GraphModule:
    """Trace ``root`` (in eval mode) for ``example``'s shape into a GraphModule sharing its modules."""
    graph = tracer.trace_with(root.eval(), example)
    return fx.GraphModule(tracer.root, graph, class_name=type(root).__name__)


def output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "output")


def _single_live_cuts(nodes: list[fx.Node]) -> dict[int, fx.Node]:
    """Positions after which exactly one computed value is still needed, with that value."""
    pos = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((pos[u] for u in n.users), default=-1) for n in nodes}
    live: set[fx.Node] = set()
    cuts = {}
    for i, n in enumerate(nodes):
        if n.op == "output":
            break
        for a in n.all_input_nodes:
            if last_use[a] == i:
                live.discard(a)
        if n.op != "get_attr" and last_use[n] > i:
            live.add(n)
        if len(live) == 1:
            cuts[i] = next(iter(live))
    return cuts


def _common_prefix(paths: Sequence[str]) -> str:
    parts = [p.split(".") for p in paths]
    out = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        out.append(level[0])
    return ".".join(out)


def _stage_name(stage_nodes, keys, path_of, params: Sequence[str]) -> str:
    """A stage's name: its first group's key when that is a path, else the module path
    that its first group's nodes share, widened while the wider module lies wholly in it."""
    first = [n for n in stage_nodes if n in keys]
    if not first:
        return "stage"
    key = keys[first[0]]
    if isinstance(key, str):
        return key
    paths = [path_of(n) for n in first if keys[n] == key]
    name = _common_prefix(paths)
    if not name:  # e.g. the last block and the final norm: name it after the block
        head = paths[0].split(".")[0]
        name = _common_prefix([p for p in paths if p.split(".")[0] == head])
    used = [path_of(n) for n in first]
    inside = [p for p in params if any(p == u or p.startswith(u + ".") for u in used)]
    while "." in name:
        parent = name.rpartition(".")[0]
        under = [p for p in params if p.startswith(parent + ".")]
        if not under or any(p not in inside for p in under):
            break
        name = parent
    return name or "stage"


def _permute(graph: fx.Graph, node, dims):
    return graph.call_method("permute", (node, *dims))


def _segment(root, nodes, lo, hi, inp, out, *, nhwc_in=False, nhwc_out=False) -> fx.GraphModule:
    """The nodes in ``(lo, hi]`` as a GraphModule taking ``inp``'s value and returning ``out``'s."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    env = {inp: _permute(graph, x, (0, 2, 3, 1)) if nhwc_in else x}

    def lookup(a: fx.Node):
        if a not in env:
            if a.op != "get_attr":
                raise KeyError(a)
            env[a] = graph.get_attr(a.target)
        return env[a]

    for n in nodes[lo + 1 : hi + 1]:
        if n in env or n.op == "get_attr":
            continue
        env[n] = graph.node_copy(n, lookup)
    result = lookup(out)
    graph.output(_permute(graph, result, (0, 3, 1, 2)) if nhwc_out else result)
    stage = fx.GraphModule(root, graph, class_name="Stage")
    stage.graph.eliminate_dead_code()
    stage.recompile()
    return stage


def _ndim(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if hasattr(meta, "shape") else None


def split(
    gm: fx.GraphModule,
    key_of_path: Callable[[str], object],
    example: torch.Tensor,
    *,
    feature_node: Callable[[list[fx.Node]], fx.Node | None],
    nhwc: bool = False,
    strip: str = "",
    root: nn.Module | None = None,
) -> tuple[list[tuple[str, nn.Module]], nn.Module | None]:
    """Cut ``gm`` (one tensor in, one out) into stages at group boundaries.

    Parameters
    ----------
    gm : GraphModule
        The traced network; its output is the pre-logits vector.
    key_of_path : callable
        Module or parameter path (``strip`` removed) -> group key, or None for a
        path outside every group (parameter-free glue).
    example : Tensor
        An input, used to record the shapes (``ShapeProp``).
    feature_node : callable
        The node list -> the node whose value is the unpooled final features.
    nhwc : bool
        Intermediate maps are channels-last (N, H, W, C): stages hand them on
        as (N, C, H, W) and turn them back.
    strip : str
        Prefix of the traced root's paths to drop (a wrapper's ``"model."``).
    root : nn.Module, optional
        The traced module itself, to look up the type of each parameter's owner.

    Returns
    -------
    stages : list of (name, GraphModule)
    unpooled : GraphModule or None
        The last stage stopped at ``feature_node`` (None when that node lies
        before the last cut).
    """
    ShapeProp(gm).propagate(example)
    nodes = list(gm.graph.nodes)
    modules = dict(root.named_modules()) if root is not None else dict(gm.named_modules())

    def path_of(n: fx.Node) -> str | None:
        """The module a node belongs to: its target, or the module whose forward made it."""
        if n.op in ("call_module", "get_attr") and isinstance(n.target, str):
            path = n.target
        else:
            stack = n.meta.get("nn_module_stack") or {}
            if not stack:
                return None
            path = list(stack.values())[-1][0]
        return path[len(strip) :] if path.startswith(strip) else path

    def uses_params(n: fx.Node) -> bool:
        if n.op == "get_attr":
            return isinstance(getattr_path(gm, n.target), nn.Parameter)
        if n.op == "call_module":
            return any(True for _ in gm.get_submodule(n.target).parameters())
        return False

    # group key of every node inside a group's modules (parameter-free steps of a block,
    # such as a residual add or a reshape, belong to the block); in graph order. A group
    # of only normalization layers (a final norm, a conv's BatchNorm) joins the one before.
    keys: dict[int, object] = {}
    members: dict[object, list[fx.Node]] = {}
    for i, n in enumerate(nodes):
        path = path_of(n)
        k = key_of_path(path) if path else None
        if k is None:
            continue
        keys[i] = k
        members.setdefault(k, [])
        if uses_params(n):
            members[k].append(n)
    def is_norm(n: fx.Node) -> bool:
        owner = n.target if n.op == "call_module" else n.target.rpartition(".")[0]
        return isinstance(modules.get(owner), _NORMS)

    order = list(members)
    merged = {}
    for j, k in enumerate(order):
        norm_only = bool(members[k]) and all(is_norm(n) for n in members[k])
        merged[k] = merged[order[j - 1]] if (norm_only and j > 0) else j
    params = [n[len(strip):] if n.startswith(strip) else n for n, _ in gm.named_parameters()]
    cut_ok = _single_live_cuts(nodes)
    cuts: list[int] = []
    cur, last = None, None
    for i in sorted(keys):
        g = merged[keys[i]]
        if cur is not None and g > cur:
            p = max((q for q in cut_ok if last <= q < i), default=None)
            if p is not None and (not cuts or p > cuts[-1]):
                cuts.append(p)
        cur = g if cur is None else max(cur, g)
        last = i
    out = output_node(gm).args[0]
    placeholder = nodes[0]
    bounds = [0, *cuts, len(nodes) - 2]
    carried = [placeholder, *(cut_ok[c] for c in cuts), out]

    def is_map(node) -> bool:
        return nhwc and _ndim(node) == 4

    stages = []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        mod = _segment(
            gm, nodes, lo, hi, carried[s], carried[s + 1],
            nhwc_in=s > 0 and is_map(carried[s]), nhwc_out=is_map(carried[s + 1]),
        )
        node_keys = {nodes[i]: k for i, k in keys.items()}
        name = "stem" if s == 0 else _stage_name(nodes[lo + 1 : hi + 1], node_keys, path_of, params)
        stages.append((name, mod))
    seen: dict[str, int] = {}
    for i, (name, mod) in enumerate(stages):
        if name in seen:
            stages[i] = (f"{name}_{i}", mod)
        seen[name] = i
    unpooled = None
    feat = feature_node(nodes)
    if feat is not None and nodes.index(feat) > bounds[-2] and feat is not out:
        lo = bounds[-2]
        unpooled = _segment(
            gm, nodes, lo, nodes.index(feat), carried[-2], feat,
            nhwc_in=len(stages) > 1 and is_map(carried[-2]), nhwc_out=is_map(feat),
        )
    return stages, unpooled


def getattr_path(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def last_spatial_node(nodes: list[fx.Node], before: fx.Node) -> fx.Node | None:
    """The last node up to ``before`` whose value is a map or tokens with more than one position."""
    found = None
    for n in nodes:
        meta = n.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        positions = shape[1:-1] if shape is not None and len(shape) == 3 else (shape or [])[2:]
        if shape is not None and len(shape) in (3, 4) and math.prod(positions) > 1:
            found = n
        if n is before:
            break
    return found


def tree_groups(model: nn.Module) -> list[str]:
    """Declared blocks of a module tree, as paths, for models without a group matcher.

    From the root down: where several children of one class hold parameters
    (ResNet's ``layer1..4``, a ViT's encoder layers), those children are the
    blocks; otherwise the child with most of the parameter-holding leaves
    (``features``, ``encoder``) is opened and its children are the blocks, the
    other children staying blocks of their own.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(*[nn.Conv2d(4, 4, 1) for _ in range(3)]))
    >>> tree_groups(net)
    ['0', '1.0', '1.1', '1.2']
    """

    def leaves(m: nn.Module) -> int:
        return sum(1 for c in m.modules() if not list(c.children()) and list(c.parameters(recurse=False)))

    def expand(m: nn.Module, prefix: str) -> list[str]:
        kids = [(n, c) for n, c in m.named_children() if any(True for _ in c.parameters())]
        if len(kids) < 2 and prefix:
            return [prefix.rstrip(".")]
        counts: dict[type, int] = {}
        for _, c in kids:
            counts[type(c)] = counts.get(type(c), 0) + 1
        if any(v >= 3 for v in counts.values()):
            return [prefix + n for n, _ in kids]
        total = sum(leaves(c) for _, c in kids)
        out = []
        for n, c in kids:
            if total and leaves(c) * 2 > total and len(list(c.children())) >= 2:
                out += expand(c, prefix + n + ".")
            else:
                out.append(prefix + n)
        return out

    return expand(model, "")


def key_by_prefix(groups: Sequence[str]) -> Callable[[str], str | None]:
    """Path -> the group (a path prefix) it lies in, or None."""
    gset = set(groups)

    def key(path: str | None):
        while path:
            if path in gset:
                return path
            path = path.rpartition(".")[0]
        return None

    return key


def verify(stages, unpooled, reference: Callable[[torch.Tensor], torch.Tensor], x) -> torch.Tensor:
    """Run the stages on ``x``; raise ``ValueError`` unless they give ``reference(x)``."""
    with torch.no_grad():
        want = reference(x)
        got = x
        for _, s in stages:
            got = s(got)
    if not isinstance(want, torch.Tensor) or got.shape != want.shape:
        raise ValueError(f"stages give {tuple(got.shape)}, the model {getattr(want, 'shape', want)}")
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise ValueError(f"stages differ from the model by {(got - want).abs().max().item():.3g}")
    return want


def example_input(config: DataConfig, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, config.in_chans, config.input_size, config.input_size, generator=g)


def assemble(stages, unpooled, config, *, name, classifier, num_prefix_tokens, out) -> Backbone:
    return Backbone(
        stages, config, name=name, classifier=classifier, num_prefix_tokens=num_prefix_tokens,
        unpooled_stage=unpooled, pooled_output=out.ndim == 2,
        num_features=out.shape[1] if out.ndim == 2 else None,  # the pre-logits, measured
    )
