"""Modalities (sktransfer._modality): the one place that knows images from texts."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from sktransfer import _runtime
from sktransfer._modality import IMAGE, TEXT, get_modality
from sktransfer.backbones import Backbone, DataConfig
from sktransfer.exceptions import BackboneError

PACKAGE = Path(__file__).parents[1] / "sktransfer"


def _text_comparisons(path: Path) -> list[int]:
    """Lines of ``... == "text"`` / ``"text" != ...`` comparisons in ``path``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value == "text" for o in operands):
                lines.append(node.lineno)
    return lines


def test_only_the_modality_module_branches_on_text():
    # the source adapters declare which models are text models; everything else asks the
    # backbone's modality object
    found = {
        str(p.relative_to(PACKAGE)): _text_comparisons(p)
        for p in PACKAGE.rglob("*.py")
        if p.name != "_modality.py" and "_sources" not in p.parts
    }
    assert {k: v for k, v in found.items() if v} == {}
    assert _text_comparisons(PACKAGE / "_modality.py") == []  # it dispatches on objects


def test_get_modality():
    bb = Backbone([("conv", nn.Conv2d(3, 4, 3))], DataConfig(input_size=8), name="tiny")
    assert get_modality(bb) is IMAGE and get_modality("text") is TEXT and get_modality(TEXT) is TEXT
    assert bb.modality == "image"  # the string stays
    assert get_modality(bb).example_input(bb).shape == (1, 3, 8, 8)
    assert IMAGE.caches_unpooled and not TEXT.caches_unpooled
    assert pickle.loads(pickle.dumps(TEXT)) is TEXT
    with pytest.raises(BackboneError, match="Unknown modality 'audio'"):
        get_modality("audio")


def test_batch_size_comes_from_the_modality():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _runtime.resolve_batch_size("auto", cpu) == 8
    assert _runtime.resolve_batch_size("auto", cuda, IMAGE) == 64
    assert _runtime.resolve_batch_size("auto", cpu, TEXT) == 64
    assert _runtime.resolve_batch_size("auto", cuda, TEXT) == 256
    assert _runtime.resolve_batch_size(5, cpu, TEXT) == 5
    with pytest.raises(TypeError, match="get_modality"):
        _runtime.resolve_batch_size("auto", cpu, "text")  # a name would silently mean images


def test_sources_by_modality():
    assert TEXT.as_source(["a", "b"]).kind == "text"
    with pytest.raises(Exception, match="look like texts"):
        IMAGE.as_source(["a sentence", "another one"])
