"""Export a fitted estimator for serving: an ONNX file for onnxruntime, a TorchScript
program for ``torch.jit.load``, or a ``torch.export`` program, with its preprocessing
written beside it.

What is exported is the network from the preprocessed inputs to the estimator's output,
pooling included: features for a :class:`~sktransfer.PretrainedFeatureExtractor`, class
probabilities (``predict_proba``) for a :class:`~sktransfer.FineTuneClassifier`
(per-label probabilities for multi-label targets), predictions in the units of ``y`` for
a :class:`~sktransfer.FineTuneRegressor`, and for
a ``Pipeline(PretrainedFeatureExtractor(), <sklearn steps>)`` one ONNX graph holding the
network and the sklearn steps (converted by skl2onnx, through a converter this module
registers for the extractor). The ``.json`` file written next to the model says how to
make the inputs.

Image backbones take ``"pixel_values"``; decoding, resizing and normalization stay
outside the graph, and the ``.json`` gives them (the same steps as
:class:`sktransfer.io.ImageTransform` on an 8-bit RGB image):

1. decode to RGB (8 bits per channel; transparent pixels over white);
2. resize with Pillow's ``interpolation`` filter so the shorter side is
   ``resize_size`` (the longer one ``int(resize_size * long / short)``), and
   center-crop ``input_size`` x ``input_size`` (offsets ``round((new - crop) / 2)``);
   the estimators do both in one ``Image.resize(..., box=...)`` over the source region
   of the crop, and so should a service that wants the same numbers;
3. scale to [0, 1] (``/ 255``), subtract ``mean`` and divide by ``std`` per channel;
4. lay out as float32 ``(batch, 3, input_size, input_size)``.

Text backbones take the tokenizer's outputs that the model uses (``input_ids``,
``attention_mask``, and ``token_type_ids`` where the tokenizer gives them), int64
``(batch, sequence)`` with both axes dynamic (the sequence at most ``max_length``; fixed at
``max_length`` for a tokenizer that always pads to it, SigLIP's). Tokenization stays
outside the graph: the backbone's tokenizer is written beside the model as
``<model>.tokenizer.json``, with the estimator's truncation (``max_length`` tokens,
special tokens included) and padding switched on, so that the ``tokenizers`` library's
``Tokenizer.from_file(...).encode_batch(texts)`` gives the graph's inputs as the
estimator makes them (``export`` checks that on test texts, and raises
:class:`~sktransfer.exceptions.ExportError` if not).

``docs/examples/serve_onnx.py`` serves an exported image classifier with onnxruntime,
numpy and Pillow alone, ``docs/examples/serve_onnx_text.py`` a text classifier with
onnxruntime, numpy and tokenizers alone; :func:`preprocess` gives a model's inputs from
Python, by the estimator's own data path.

Examples
--------
>>> import os, tempfile
>>> import numpy as np
>>> from torch import nn
>>> from sktransfer import BackboneSpec, DataConfig, PretrainedFeatureExtractor
>>> from sktransfer import export
>>> spec = BackboneSpec(module=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
...                     data_config=DataConfig(input_size=16, resize_size=None))
>>> ext = PretrainedFeatureExtractor(spec, precision="fp32").fit()
>>> path = export(ext, os.path.join(tempfile.mkdtemp(), "features.pt"), format="torchscript")
>>> import torch, json, warnings
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore")  # torch marks TorchScript deprecated
...     program = torch.jit.load(str(path))
>>> x = torch.zeros(2, 3, 16, 16)
>>> program(x).shape
torch.Size([2, 4])
>>> json.loads(path.with_suffix(".json").read_text())["preprocessing"]["input_size"]
16
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._modality import get_modality
from .exceptions import ExportError, import_optional

__all__ = ["DEFAULT_OPSET", "FORMATS", "export", "preprocess"]

FORMATS = ("onnx", "torchscript", "torch.export")
# ONNX opset of the exported graphs: recent enough for every operator of the backbone zoo
# (torch's exporter lowers attention, layer norm and GELU at this opset).
DEFAULT_OPSET = 18
INPUT_NAME = "pixel_values"
_ONNX_EXTRA = "Exporting to ONNX needs onnx and onnxruntime: pip install 'sktransfer[onnx]'."
_SKL2ONNX_EXTRA = (
    "Exporting a Pipeline to one ONNX graph needs skl2onnx: pip install 'sktransfer[onnx]'."
)


class _Probabilities(nn.Module):
    """Logits of a fine-tuned classifier as its ``predict_proba``: softmax over the classes,
    or each label's sigmoid (multi-label)."""

    def __init__(self, net: nn.Module, multilabel: bool = False):
        super().__init__()
        self.net = net
        self.multilabel = multilabel

    def forward(self, x):
        z = self.net(x).float()
        return torch.sigmoid(z) if self.multilabel else torch.softmax(z, dim=1)


class _Predictions(nn.Module):
    """A fine-tuned regressor's standardized outputs in the units of its targets
    (``predict``, as a (batch, n_outputs) matrix)."""

    def __init__(self, net: nn.Module, mean, scale):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x):
        return self.net(x).float() * self.scale + self.mean


def _fitted(estimator, attribute: str) -> None:
    try:
        check_is_fitted(estimator, attribute)
    except Exception as exc:
        raise ExportError(
            f"{type(estimator).__name__} is not fitted: call fit before export."
        ) from exc


def _fitted_backbone(estimator):
    """The fitted backbone of an exportable estimator (errors say why not)."""
    from .extraction import PretrainedFeatureExtractor
    from .finetune import FineTuneClassifier, FineTuneRegressor

    if isinstance(estimator, PretrainedFeatureExtractor):
        _fitted(estimator, "backbone_")
    elif isinstance(estimator, (FineTuneClassifier, FineTuneRegressor)):
        _fitted(estimator, "net_")
    else:
        raise ExportError(
            "export takes a fitted PretrainedFeatureExtractor, FineTuneClassifier, "
            f"FineTuneRegressor or a Pipeline "
            f"starting with a PretrainedFeatureExtractor; got {type(estimator).__name__}."
        )
    return estimator.backbone_


def _serving(estimator) -> tuple[nn.Module, object, dict]:
    """(network from the graph inputs to the output, how the graph is fed, output description)."""
    from .extraction import PretrainedFeatureExtractor
    from .finetune import FineTuneRegressor

    _fitted_backbone(estimator)
    inputs = _graph_inputs(estimator)
    if isinstance(estimator, PretrainedFeatureExtractor):
        module = estimator._feature_net()
        output = {
            "name": "features",
            "shape": ["batch", int(estimator.n_features_out_)],
            "feature_names": [str(f) for f in estimator.get_feature_names_out()],
        }
    elif isinstance(estimator, FineTuneRegressor):
        net = estimator.net_.module_.from_stage(0)
        module = _Predictions(net, estimator.target_mean_, estimator.target_scale_)
        output = {
            "name": "predictions",
            "shape": ["batch", int(estimator.n_outputs_)],
            "target_type": estimator.target_type_,
        }
    else:
        multilabel = estimator._multilabel()
        module = _Probabilities(estimator.net_.module_.from_stage(0), multilabel)
        output = {
            "name": "probabilities",
            "shape": ["batch", len(estimator.classes_)],
            "classes": [c.item() if hasattr(c, "item") else c for c in estimator.classes_],
            "target_type": getattr(estimator, "target_type_", None),
        }
        if multilabel:
            output["threshold"] = float(estimator.threshold)
    # a copy on the CPU in fp32 and eval mode: the estimator itself is left as it was
    module = copy.deepcopy(module).to("cpu", torch.float32).eval()
    module = module.to(memory_format=torch.contiguous_format)
    module.requires_grad_(False)
    return inputs.wrap(module), inputs, output


# --------------------------------------------------------------------------- graph inputs


class _ImageInputs:
    """The graph input of an image backbone: ``"pixel_values"``, the preprocessed float32
    batch (decoding, resizing and normalization stay outside the graph)."""

    def __init__(self, estimator):
        self.backbone = estimator.backbone_
        self.transform = estimator.transform_
        self.names = (INPUT_NAME,)

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def write_files(self, path: Path) -> None:
        """Nothing beside the model but its ``.json``: the preprocessing is in words there."""

    def example(self) -> tuple:
        # two images: a batch of one would let the exporter fix the batch dimension to 1
        x = get_modality(self.backbone).example_input(self.backbone)
        return (x.to("cpu", torch.float32).repeat(2, *([1] * (x.ndim - 1))),)

    def dynamic_shapes(self) -> tuple:
        return ({0: torch.export.Dim("batch")},)

    def test_batch(self, path: Path) -> tuple:
        shape = self.example()[0].shape[1:]
        return (torch.randn(3, *shape, generator=torch.Generator().manual_seed(0)),)

    def describe(self) -> list[dict]:
        shape = self.example()[0].shape[1:]
        return [{"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", *map(int, shape)]}]

    def onnx_types(self) -> list:
        from skl2onnx.common.data_types import FloatTensorType

        return [(INPUT_NAME, FloatTensorType([None, *map(int, self.example()[0].shape[1:])]))]

    def preprocessing(self, path: Path) -> dict:
        from .io import ImageTransform

        cfg = self.backbone.data_config
        return {
            "input": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB, 8 bits per channel",
            "input_size": cfg.input_size,
            "resize_size": cfg.resize_size,
            "interpolation": cfg.interpolation,
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "jpeg_draft_size": ImageTransform(cfg).draft_size(),
            "steps": [
                "decode to 8-bit RGB (EXIF orientation applied, transparent pixels composited "
                "over white); a JPEG may be decoded with Pillow's Image.draft('RGB', "
                "(jpeg_draft_size, jpeg_draft_size)) as the estimators do",
                "resize (Pillow, `interpolation`) so the shorter side is `resize_size`, then "
                "center-crop `input_size` (with resize_size null: resize to input_size directly)",
                "divide by 255, subtract `mean`, divide by `std`, per channel",
                "stack as float32 (batch, 3, input_size, input_size)",
            ],
        }

    def preprocess(self, source) -> np.ndarray:
        from ._runtime import inference_batches
        from .io import make_dataset

        data = make_dataset(source, self.transform)
        batches = inference_batches(data, batch_size=64, device=torch.device("cpu"))
        return np.concatenate([x.numpy() for x, _ in batches]).astype(np.float32)

    def locate_failure(self, format: str, opset: int) -> str:
        """Name the first stage that cannot be exported on its own (for the error message)."""
        x = self.example()[0]
        for name, stage in zip(self.backbone.stage_names, self.backbone.stages):
            stage = copy.deepcopy(stage).to("cpu", torch.float32).eval()
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    _write_graph(format, stage, (x,), self.names, self.dynamic_shapes(),
                                 Path(tmp) / "stage", "out", opset)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the exporters raise many types
                return f"stage {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
            with torch.no_grad():
                x = stage(x)
        return "the pooling or the head after the last stage"


class _TokenInputs(nn.Module):
    """A text network (which takes the tokenizer's dict) called with the tokenizer's
    tensors as positional inputs, in the order of ``names``."""

    def __init__(self, net: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.net = net
        self.names = tuple(names)

    def forward(self, input_ids, second=None, third=None):
        values = (input_ids, second, third)[: len(self.names)]
        return self.net(dict(zip(self.names, values)))


# texts of different lengths, accents, an empty one and one past max_length: the written
# tokenizer must give the estimator's ids on them, and the graph its outputs (the empty text
# left out there: with a tokenizer that adds no special tokens, GPT-2's, it has no token to
# attend to, and torch and onnxruntime fill that undefined row differently)
_PROBE_TEXTS = (
    "a short text",
    "Crème brûlée, naïve CAFÉ — 3.14 ünïcödé!",
    "a long text " * 200,
    "",
)


class _TextInputs:
    """The graph inputs of a text backbone: the tokenizer's outputs that the model takes
    (``input_ids``, ``attention_mask``, ``token_type_ids``), int64 (batch, sequence).

    Tokenization stays outside the graph, in the ``tokenizers`` library: the backbone's
    tokenizer is written beside the model (``<model>.tokenizer.json``) with the
    estimator's truncation and padding switched on, so ``Tokenizer.from_file(...)``
    ``.encode_batch(texts)`` gives the graph's inputs as the estimator makes them.
    """

    def __init__(self, estimator):
        self.backbone = estimator.backbone_
        self.transform = estimator.transform_
        self.tokenizer = self.transform.tokenizer
        self.max_length = int(self.transform.max_length)
        accepted = getattr(self.backbone.stages[0], "inputs", None)
        keys = list(self.transform(["example"]))
        self.names = tuple(k for k in keys if accepted is None or k in accepted)
        if not 1 <= len(self.names) <= 3:
            raise ExportError(
                f"The tokenizer of {self.backbone.name!r} gives {keys}; export takes a text "
                "model fed by one to three of input_ids, attention_mask and token_type_ids."
            )
        # the estimator's own padding: to the longest text of a batch, or always max_length
        self.fixed_length = len(self.transform([""])["input_ids"][0]) == self.max_length

    def wrap(self, module: nn.Module) -> nn.Module:
        return _TokenInputs(module, self.names)

    def _tensors(self, texts) -> tuple:
        batch = self.transform(list(texts))
        return tuple(batch[k].to(torch.int64) for k in self.names)

    def example(self) -> tuple:
        # two texts of different lengths: neither batch nor sequence is fixed by the trace
        return self._tensors(["example", "an example text of a few more words"])

    def dynamic_shapes(self) -> tuple:
        batch = torch.export.Dim("batch")
        if self.fixed_length:
            return tuple({0: batch} for _ in self.names)
        sequence = torch.export.Dim("sequence", max=self.max_length)
        return tuple({0: batch, 1: sequence} for _ in self.names)

    def describe(self) -> list[dict]:
        length = self.max_length if self.fixed_length else "sequence"
        return [{"name": k, "dtype": "int64", "shape": ["batch", length]} for k in self.names]

    def onnx_types(self) -> list:
        from skl2onnx.common.data_types import Int64TensorType

        length = self.max_length if self.fixed_length else None
        return [(k, Int64TensorType([None, length])) for k in self.names]

    def tokenizer_path(self, path: Path) -> Path:
        return path.with_suffix(".tokenizer.json")

    def _backend(self):
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ExportError(
                f"The tokenizer of {self.backbone.name!r} ({type(self.tokenizer).__name__}) has no "
                "`tokenizers` backend (a 'fast' tokenizer), so a service could not tokenize as the "
                "estimator does without transformers. Use a model folder with a tokenizer.json."
            )
        return backend

    def write_files(self, path: Path) -> None:
        """The backbone's tokenizer, with the estimator's truncation and padding switched on."""
        tokenizers = import_optional(
            "tokenizers", "Exporting a text model needs tokenizers: pip install 'sktransfer[text]'."
        )
        tok = tokenizers.Tokenizer.from_str(self._backend().to_str())
        t = self.tokenizer
        tok.enable_truncation(self.max_length, direction=t.truncation_side)
        tok.enable_padding(
            direction=t.padding_side,
            pad_id=int(t.pad_token_id),
            pad_type_id=int(getattr(t, "pad_token_type_id", 0) or 0),
            pad_token=str(t.pad_token),
            length=self.max_length if self.fixed_length else None,
        )
        tok.save(str(self.tokenizer_path(path)))

    def test_batch(self, path: Path) -> tuple:
        """The probe texts as the graph's inputs, once the written tokenizer is checked to
        encode them as the estimator does (the service must feed the graph the same ids)."""
        from tokenizers import Tokenizer

        encodings = Tokenizer.from_file(str(self.tokenizer_path(path))).encode_batch(
            list(_PROBE_TEXTS)
        )
        fields = {
            "input_ids": "ids",
            "attention_mask": "attention_mask",
            "token_type_ids": "type_ids",
        }
        written = tuple(
            torch.tensor([getattr(e, fields[k]) for e in encodings], dtype=torch.int64)
            for k in self.names
        )
        expected = self._tensors(_PROBE_TEXTS)
        for name, a, b in zip(self.names, written, expected):
            if a.shape != b.shape or not torch.equal(a, b):
                raise ExportError(
                    f"The tokenizer written for serving ({self.tokenizer_path(path).name}) does not "
                    f"give the estimator's {name} on a test text; a service could not reproduce the "
                    "estimator's outputs. Pickle the estimator instead."
                )
        return self._tensors(_PROBE_TEXTS[:-1])

    def preprocessing(self, path: Path) -> dict:
        t = self.tokenizer
        return {
            "inputs": list(self.names),
            "dtype": "int64",
            "tokenizer": self.tokenizer_path(path).name,
            "library": "tokenizers",
            "max_length": self.max_length,
            "truncation": True,
            "truncation_side": t.truncation_side,
            "padding": "max_length" if self.fixed_length else "longest",
            "padding_side": t.padding_side,
            "pad_token": str(t.pad_token),
            "pad_token_id": int(t.pad_token_id),
            "add_special_tokens": True,
            "steps": [
                "load `tokenizer` (beside the model) with tokenizers.Tokenizer.from_file: its "
                "truncation (to `max_length` tokens, special tokens included) and padding are "
                "already switched on as the estimator tokenizes",
                "encode the batch: Tokenizer.encode_batch(texts) (special tokens added)",
                "feed each of `inputs` as an int64 (batch, sequence) array: input_ids from "
                "Encoding.ids, attention_mask from Encoding.attention_mask, token_type_ids from "
                "Encoding.type_ids",
            ],
        }

    def preprocess(self, source) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in zip(self.names, self._tensors(source.texts))}

    def locate_failure(self, format: str, opset: int) -> str:
        return f"the text network of {self.backbone.name!r}"


_GRAPH_INPUTS = {"image": _ImageInputs, "text": _TextInputs}


def _graph_inputs(estimator):
    """How the exported graph of a fitted estimator is fed, for its backbone's modality."""
    return _GRAPH_INPUTS[get_modality(estimator.backbone_).name](estimator)


# --------------------------------------------------------------------------- writing


def _onnx_export(module, args, names, dynamic, path: Path, output: str, opset: int) -> None:
    import_optional("onnx", _ONNX_EXTRA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(args),
            str(path),
            input_names=list(names),
            output_names=[output],
            dynamic_shapes=dynamic,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _torchscript_export(module: nn.Module, args, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.jit.trace(module, tuple(args), check_trace=False)
        torch.jit.save(program, str(path))


def _program_export(module: nn.Module, args, dynamic, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, tuple(args), dynamic_shapes=dynamic)
    torch.export.save(program, str(path))


def _write_graph(format: str, module, args, names, dynamic, path: Path, output: str, opset: int):
    if format == "onnx":
        _onnx_export(module, args, names, dynamic, path, output, opset)
    elif format == "torchscript":
        _torchscript_export(module, args, path)
    else:
        _program_export(module, args, dynamic, path)


def _run(format: str, path: Path, names, args) -> np.ndarray:
    if format == "onnx":
        return _run_onnx(path, {k: v.numpy() for k, v in zip(names, args)})[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if format == "torchscript":
            return torch.jit.load(str(path))(*args).numpy()
        return torch.export.load(str(path)).module()(*args).numpy()


def _run_onnx(path: Path, feeds: dict) -> list:
    ort = import_optional("onnxruntime", _ONNX_EXTRA)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def export(estimator, path, *, format: str = "onnx", opset: int = DEFAULT_OPSET) -> Path:
    """Write a fitted estimator's network to ``path`` for serving, and its description to
    ``path`` with the suffix ``.json``.

    Parameters
    ----------
    estimator : fitted PretrainedFeatureExtractor, FineTuneClassifier, FineTuneRegressor, \
or Pipeline
        On an image or a text backbone. The exported network gives the extractor's
        features, the classifier's ``predict_proba`` (per-label probabilities for
        multi-label targets; the JSON holds the ``threshold`` that ``predict`` applies),
        or the regressor's ``predict`` as a (batch, n_outputs) matrix, in the units of
        ``y``, pooling included. A Pipeline must start with a
        :class:`~sktransfer.PretrainedFeatureExtractor`; the steps after it are converted
        by skl2onnx (``format="onnx"`` only).
    path : str or path-like
        The model file (``.onnx`` or ``.pt`` by convention).
    format : {"onnx", "torchscript", "torch.export"}, default="onnx"
        ``"onnx"``: an ONNX graph (``torch.onnx.export``, opset ``opset``).
        ``"torchscript"``: a traced TorchScript program (``torch.jit.load`` reads it
        without sktransfer; torch marks TorchScript deprecated). ``"torch.export"``: an
        ``ExportedProgram`` (``torch.export.load(path).module()``). Inputs: for an image
        backbone ``"pixel_values"``, float32, dynamic batch dimension; for a text backbone
        the tokenizer's outputs the model takes (``input_ids``, ``attention_mask``,
        ``token_type_ids``), int64 ``(batch, sequence)``, both dynamic, in the order the
        JSON lists them (the positional order of the torch programs).
    opset : int, default=18
        ONNX opset.

    Returns
    -------
    pathlib.Path
        ``path``. The ``.json`` beside it holds the input and output names and shapes,
        the preprocessing (image: sizes, interpolation, mean, std; text: the tokenizer
        file, ``max_length``, padding and truncation), the classes, target type or
        feature names, and the largest difference measured between the exported model
        and the estimator's own network on a test batch. For a text backbone the
        tokenizer is written beside it too, as ``path`` with the suffix
        ``.tokenizer.json``.

    Raises
    ------
    ExportError
        Not fitted, not an exportable estimator, a network the exporter cannot convert
        (for an image backbone the message names the first stage that fails), or a text
        tokenizer that the ``tokenizers`` library cannot reproduce (no ``tokenizer.json``
        behind it).
    MissingDependencyError
        ``onnx``/``onnxruntime`` (or ``skl2onnx`` for a Pipeline) are not installed.

    Examples
    --------
    >>> import os, tempfile
    >>> from torch import nn
    >>> from sktransfer import BackboneSpec, DataConfig, PretrainedFeatureExtractor
    >>> spec = BackboneSpec(module=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
    ...                     data_config=DataConfig(input_size=16, resize_size=None))
    >>> ext = PretrainedFeatureExtractor(spec, precision="fp32").fit()
    >>> path = export(ext, os.path.join(tempfile.mkdtemp(), "features.onnx"))
    >>> import onnxruntime, numpy as np
    >>> session = onnxruntime.InferenceSession(str(path))
    >>> session.run(None, {"pixel_values": np.zeros((3, 3, 16, 16), np.float32)})[0].shape
    (3, 4)
    """
    if format not in FORMATS:
        raise ExportError(f"format={format!r}: use one of {list(FORMATS)}.")
    path = Path(path)
    if isinstance(estimator, Pipeline):
        if format != "onnx":
            raise ExportError(
                "A Pipeline exports to ONNX only (skl2onnx converts its sklearn steps); "
                "use format='onnx'."
            )
        return _export_pipeline(estimator, path, opset)
    module, inputs, output = _serving(estimator)
    backbone = inputs.backbone
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs.write_files(path)
    test = inputs.test_batch(path)
    try:
        _write_graph(format, module, inputs.example(), inputs.names, inputs.dynamic_shapes(),
                     path, output["name"], opset)  # fmt: skip
    except (ExportError, ImportError):
        raise
    except Exception as exc:  # noqa: BLE001 - the exporters raise many types
        where = inputs.locate_failure(format, opset)
        raise ExportError(
            f"Backbone {backbone.name!r} cannot be exported to {format}: {where} fails "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). Try the other format, "
            "or pickle the estimator."
        ) from exc
    with torch.no_grad():
        expected = module(*test).numpy()
    got = _run(format, path, inputs.names, test)
    meta = {
        "format": format,
        "opset": opset if format == "onnx" else None,
        "estimator": type(estimator).__name__,
        "backbone": backbone.name,
        "modality": backbone.modality,
        "inputs": inputs.describe(),
        "outputs": [output],
        "preprocessing": inputs.preprocessing(path),
        "max_abs_diff_vs_torch": float(np.abs(got - expected).max()),
        "torch": torch.__version__,
    }
    _write_meta(path, meta)
    return path


def preprocess(estimator, X) -> np.ndarray | dict[str, np.ndarray]:
    """``X`` as the inputs an exported model takes, by the estimator's own data path: to
    check an export, or to feed it from Python.

    Parameters
    ----------
    estimator : fitted PretrainedFeatureExtractor, FineTuneClassifier, FineTuneRegressor,
        or a Pipeline starting with a PretrainedFeatureExtractor
    X : images or texts, as the estimator accepts them

    Returns
    -------
    ndarray or dict of str to ndarray
        Image backbone: the float32 ``"pixel_values"`` batch. Text backbone: the graph's
        inputs by name (``input_ids``, ``attention_mask``, ...), int64 ``(n_texts,
        sequence)``, all texts tokenized as one batch (padded to the longest), ready for
        ``session.run(None, preprocess(estimator, texts))``.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import BackboneSpec, DataConfig, PretrainedFeatureExtractor
    >>> spec = BackboneSpec(module=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
    ...                     data_config=DataConfig(input_size=16, resize_size=None))
    >>> ext = PretrainedFeatureExtractor(spec, precision="fp32").fit()
    >>> preprocess(ext, np.zeros((2, 20, 20, 3), np.uint8)).shape
    (2, 3, 16, 16)
    """
    from ._modality import as_source

    if isinstance(estimator, Pipeline):
        estimator = estimator.steps[0][1]
    backbone = _fitted_backbone(estimator)
    return _graph_inputs(estimator).preprocess(as_source(X, backbone.modality))


def _write_meta(path: Path, meta: dict) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        meta["sktransfer"] = version("sktransfer")
    except PackageNotFoundError:  # a source tree that is not installed
        meta["sktransfer"] = None
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


# --------------------------------------------------------------------------- pipelines


def _onnx_model(extractor, opset: int):
    """The extractor's network as an in-memory ONNX model (local functions inlined)."""
    onnx = import_optional("onnx", _ONNX_EXTRA)
    module, inputs, output = _serving(extractor)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "features.onnx"
        _onnx_export(module, inputs.example(), inputs.names, inputs.dynamic_shapes(), file,
                     output["name"], opset)  # fmt: skip
        model = onnx.load(str(file))
    from onnx import inliner

    return inliner.inline_local_functions(model)


def _shape_calculator(operator):
    from skl2onnx.common.data_types import FloatTensorType

    n = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([n, int(operator.raw_operator.n_features_out_)])


def _converter(scope, operator, container):
    """skl2onnx converter of a fitted PretrainedFeatureExtractor: its exported network,
    inlined into the pipeline's graph under names unique to this operator."""
    from onnx import helper, numpy_helper

    model = _onnx_model(operator.raw_operator, container.target_opset)
    graph = model.graph
    prefix = scope.get_unique_operator_name("sktransfer_extractor") + "_"
    # the graph's inputs are the pipeline's (pixel_values, or the tokenizer's outputs), in order
    rename = {g.name: v.full_name for g, v in zip(graph.input, operator.inputs)}
    rename[graph.output[0].name] = operator.outputs[0].full_name

    def name(n: str) -> str:
        return rename.get(n, prefix + n) if n else n

    for init in graph.initializer:
        tensor = numpy_helper.from_array(numpy_helper.to_array(init), name(init.name))
        container.add_initializer(tensor.name, tensor.data_type, list(tensor.dims), tensor)
    versions = {o.domain: o.version for o in model.opset_import}
    for node in graph.node:
        attrs = {}
        for a in node.attribute:
            if a.type in (a.GRAPH, a.GRAPHS):
                raise ExportError(
                    f"The extractor's graph has a control-flow node ({node.op_type}); it cannot "
                    "be inlined into a Pipeline graph. Export the extractor alone."
                )
            attrs[a.name] = helper.get_attribute_value(a)
        container.add_node(
            node.op_type,
            [name(i) for i in node.input],
            [name(o) for o in node.output],
            name=prefix + (node.name or node.op_type),
            op_domain=node.domain,
            op_version=versions.get(node.domain),
            **attrs,
        )


def _register_converter() -> None:
    skl2onnx = import_optional("skl2onnx", _SKL2ONNX_EXTRA)
    from .extraction import PretrainedFeatureExtractor

    skl2onnx.update_registered_converter(
        PretrainedFeatureExtractor,
        "SktransferPretrainedFeatureExtractor",
        _shape_calculator,
        _converter,
    )


def _export_pipeline(pipeline: Pipeline, path: Path, opset: int) -> Path:
    from .extraction import PretrainedFeatureExtractor

    first = pipeline.steps[0][1]
    if not isinstance(first, PretrainedFeatureExtractor):
        raise ExportError(
            "A Pipeline exports when its first step is a PretrainedFeatureExtractor; this one "
            f"starts with {type(first).__name__}."
        )
    backbone = _fitted_backbone(first)
    inputs = _graph_inputs(first)
    _register_converter()
    from skl2onnx import convert_sklearn

    path.parent.mkdir(parents=True, exist_ok=True)
    inputs.write_files(path)
    inputs.test_batch(path)  # for text: the written tokenizer gives the estimator's ids
    last = pipeline.steps[-1][1]
    options = {id(last): {"zipmap": False}} if hasattr(last, "predict_proba") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_sklearn(
            pipeline,
            initial_types=inputs.onnx_types(),
            target_opset={"": opset, "ai.onnx.ml": 3},
            options=options,
        )
    path.write_bytes(model.SerializeToString())
    outputs = [{"name": o.name} for o in model.graph.output]
    classes = getattr(last, "classes_", None)
    if classes is not None:
        outputs[-1]["classes"] = [c.item() if hasattr(c, "item") else c for c in classes]
    _write_meta(
        path,
        {
            "format": "onnx",
            "opset": opset,
            "estimator": "Pipeline(" + ", ".join(type(s).__name__ for _, s in pipeline.steps) + ")",
            "backbone": backbone.name,
            "modality": backbone.modality,
            "inputs": inputs.describe(),
            "outputs": outputs,
            "preprocessing": inputs.preprocessing(path),
            "torch": torch.__version__,
        },
    )
    return path
