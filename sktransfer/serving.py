"""Export a fitted estimator for serving: an ONNX file for onnxruntime, or a TorchScript
program for ``torch.jit.load``, with its preprocessing written beside it.

What is exported is the network from the preprocessed image tensor to the estimator's
output: features for a :class:`~sktransfer.PretrainedFeatureExtractor`, class
probabilities (``predict_proba``) for a :class:`~sktransfer.FineTuneClassifier`
(per-label probabilities for multi-label targets), predictions in the units of ``y`` for
a :class:`~sktransfer.FineTuneRegressor`, and for
a ``Pipeline(PretrainedFeatureExtractor(), <sklearn steps>)`` one ONNX graph holding the
network and the sklearn steps (converted by skl2onnx, through a converter this module
registers for the extractor). Decoding, resizing and normalization stay outside the
graph; the ``.json`` file written next to the model says exactly how to do them (the
same steps as :class:`sktransfer.io.ImageTransform` on an 8-bit RGB image):

1. decode to RGB (8 bits per channel; transparent pixels over white);
2. resize with Pillow's ``interpolation`` filter so the shorter side is
   ``resize_size`` (the longer one ``int(resize_size * long / short)``), and
   center-crop ``input_size`` x ``input_size`` (offsets ``round((new - crop) / 2)``);
   the estimators do both in one ``Image.resize(..., box=...)`` over the source region
   of the crop, and so should a service that wants the same numbers;
3. scale to [0, 1] (``/ 255``), subtract ``mean`` and divide by ``std`` per channel;
4. lay out as float32 ``(batch, 3, input_size, input_size)``.

``docs/examples/serve_onnx.py`` serves an exported classifier with onnxruntime, numpy
and Pillow alone. Image backbones only: text backbones (a tokenizer in front of the
graph) are not exported yet and raise :class:`~sktransfer.exceptions.ExportError`.

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


def _image_backbone(estimator):
    """The fitted image backbone of an exportable estimator (errors say why not)."""
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
    backbone = estimator.backbone_
    if not get_modality(backbone).spatial:
        raise ExportError(
            f"Backbone {backbone.name!r} is a {backbone.modality} backbone; export supports image "
            "backbones only (a text model needs its tokenizer in front of the graph). Pickle the "
            "estimator, or export the text model with its own library."
        )
    return backbone


def _serving(estimator) -> tuple[nn.Module, object, dict]:
    """(network from the preprocessed tensor to the output, backbone, description)."""
    from .extraction import PretrainedFeatureExtractor
    from .finetune import FineTuneRegressor

    backbone = _image_backbone(estimator)
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
    return module, backbone, output


def _preprocessing(backbone) -> dict:
    cfg = backbone.data_config
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
        "jpeg_draft_size": _draft_size(backbone),
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


def _draft_size(backbone) -> int | None:
    from .io import ImageTransform

    return ImageTransform(backbone.data_config).draft_size()


def _example(backbone) -> torch.Tensor:
    # two images: a batch of one would let the exporter fix the batch dimension to 1
    x = get_modality(backbone).example_input(backbone)
    return x.to("cpu", torch.float32).repeat(2, *([1] * (x.ndim - 1)))


def _locate_failure(backbone, x: torch.Tensor, export_one) -> str:
    """Name the first stage that cannot be exported on its own (for the error message)."""
    for name, stage in zip(backbone.stage_names, backbone.stages):
        stage = copy.deepcopy(stage).to("cpu", torch.float32).eval()
        try:
            export_one(stage, x)
        except Exception as exc:  # noqa: BLE001 - the exporters raise many types
            return f"stage {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        with torch.no_grad():
            x = stage(x)
    return "the pooling or the head after the last stage"


def _onnx_export(module: nn.Module, x: torch.Tensor, path: Path, output: str, opset: int) -> None:
    import_optional("onnx", _ONNX_EXTRA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[output],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _torchscript_export(module: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.jit.trace(module, x, check_trace=False)
        torch.jit.save(program, str(path))


def _program_export(module: nn.Module, x: torch.Tensor, path: Path) -> None:
    program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))


def _write(format: str, module: nn.Module, x: torch.Tensor, path: Path, output: str, opset: int):
    if format == "onnx":
        _onnx_export(module, x, path, output, opset)
    elif format == "torchscript":
        _torchscript_export(module, x, path)
    else:
        _program_export(module, x, path)


def _run(format: str, path: Path, x: torch.Tensor) -> np.ndarray:
    if format == "onnx":
        return _run_onnx(path, x.numpy())[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if format == "torchscript":
            return torch.jit.load(str(path))(x).numpy()
        return torch.export.load(str(path)).module()(x).numpy()


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    ort = import_optional("onnxruntime", _ONNX_EXTRA)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def export(estimator, path, *, format: str = "onnx", opset: int = DEFAULT_OPSET) -> Path:
    """Write a fitted estimator's network to ``path`` for serving, and its description to
    ``path`` with the suffix ``.json``.

    Parameters
    ----------
    estimator : fitted PretrainedFeatureExtractor, FineTuneClassifier, FineTuneRegressor, \
or Pipeline
        The exported network gives the extractor's features, the classifier's
        ``predict_proba`` (per-label probabilities for multi-label targets; the JSON
        holds the ``threshold`` that ``predict`` applies), or the regressor's ``predict``
        as a (batch, n_outputs) matrix, in the units of ``y``. A Pipeline must start with a :class:`~sktransfer.PretrainedFeatureExtractor`;
        the steps after it are converted by skl2onnx (``format="onnx"`` only).
    path : str or path-like
        The model file (``.onnx`` or ``.pt`` by convention).
    format : {"onnx", "torchscript", "torch.export"}, default="onnx"
        ``"onnx"``: an ONNX graph (``torch.onnx.export``, opset ``opset``), input
        ``"pixel_values"`` with a dynamic batch dimension. ``"torchscript"``: a traced
        TorchScript program (``torch.jit.load`` reads it without sktransfer; torch marks
        TorchScript deprecated). ``"torch.export"``: an ``ExportedProgram``
        (``torch.export.load(path).module()``), dynamic batch dimension.
    opset : int, default=18
        ONNX opset.

    Returns
    -------
    pathlib.Path
        ``path``. The ``.json`` beside it holds the input and output names and shapes,
        the preprocessing (sizes, interpolation, mean, std), the classes, target type
        or feature names, and the largest difference measured between the exported model and the
        estimator's own network on a test batch.

    Raises
    ------
    ExportError
        Not fitted, not an exportable estimator, a text backbone, or a network the
        exporter cannot convert (the message names the first stage that fails).
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
    module, backbone, output = _serving(estimator)
    x = _example(backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write(format, module, x, path, output["name"], opset)
    except (ExportError, ImportError):
        raise
    except Exception as exc:  # noqa: BLE001 - the exporters raise many types

        def one(stage, t):
            with tempfile.TemporaryDirectory() as tmp:
                _write(format, stage, t, Path(tmp) / "stage", "out", opset)

        where = _locate_failure(backbone, x, one)
        raise ExportError(
            f"Backbone {backbone.name!r} cannot be exported to {format}: {where} fails "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). Try the other format, "
            "or pickle the estimator."
        ) from exc
    test = torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(test).numpy()
    got = _run(format, path, test)
    meta = {
        "format": format,
        "opset": opset if format == "onnx" else None,
        "estimator": type(estimator).__name__,
        "backbone": backbone.name,
        "inputs": [{"name": INPUT_NAME, "shape": ["batch", *map(int, x.shape[1:])]}],
        "outputs": [output],
        "preprocessing": _preprocessing(backbone),
        "max_abs_diff_vs_torch": float(np.abs(got - expected).max()),
        "torch": torch.__version__,
    }
    _write_meta(path, meta)
    return path


def preprocess(estimator, X) -> np.ndarray:
    """``X`` as the float32 batch an exported model takes (``"pixel_values"``), by the
    estimator's own data path: to check an export, or to feed it from Python.

    Parameters
    ----------
    estimator : fitted PretrainedFeatureExtractor, FineTuneClassifier, FineTuneRegressor,
        or a Pipeline starting with a PretrainedFeatureExtractor
    X : images, as the estimator accepts them

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
    from ._runtime import inference_batches
    from .io import make_dataset

    if isinstance(estimator, Pipeline):
        estimator = estimator.steps[0][1]
    backbone = _image_backbone(estimator)
    data = make_dataset(as_source(X, backbone.modality), estimator.transform_)
    batches = inference_batches(data, batch_size=64, device=torch.device("cpu"))
    return np.concatenate([x.numpy() for x, _ in batches]).astype(np.float32)


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
    module, backbone, output = _serving(extractor)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "features.onnx"
        _onnx_export(module, _example(backbone), file, output["name"], opset)
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
    rename = {
        graph.input[0].name: operator.inputs[0].full_name,
        graph.output[0].name: operator.outputs[0].full_name,
    }

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
    backbone = _image_backbone(first)
    _register_converter()
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    shape = [None, *map(int, _example(backbone).shape[1:])]
    last = pipeline.steps[-1][1]
    options = {id(last): {"zipmap": False}} if hasattr(last, "predict_proba") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_sklearn(
            pipeline,
            initial_types=[(INPUT_NAME, FloatTensorType(shape))],
            target_opset={"": opset, "ai.onnx.ml": 3},
            options=options,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
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
            "inputs": [{"name": INPUT_NAME, "shape": ["batch", *shape[1:]]}],
            "outputs": outputs,
            "preprocessing": _preprocessing(backbone),
            "torch": torch.__version__,
        },
    )
    return path
