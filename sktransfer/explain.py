"""Grad-CAM: where a fitted model looks in an image.

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel of a spatial
feature map by the spatial mean of the gradient of a class logit with respect
to it, sums the weighted channels, keeps the positive part and upsamples the
result to the input size. Here the feature map is the output of the last
backbone stage that still has a spatial extent (or the stage named by
``layer=``), and the logit comes from the model's own head. For a vision
transformer (timm ViT, DeiT, DINOv2...), whose stages give tokens (N, T, D),
the class and register tokens (``backbone.num_prefix_tokens``) are left out
and the patch tokens are laid out on their grid (N, D, h, w), h = w =
sqrt(T - prefix); with a class-token head that is the input of the last
block (whose output reaches the class token only through that token), the
usual choice for Grad-CAM on ViTs. The model explained can be:

* a fitted :class:`~sktransfer.FineTuneClassifier`: its head (linear or MLP)
  on the pooled backbone output;
* a fitted ``Pipeline`` that starts with a
  :class:`~sktransfer.PretrainedFeatureExtractor` and ends with a linear
  model (``coef_``/``intercept_``: ``LogisticRegression``, ``LinearSVC``,
  ``RidgeClassifier``, ``SGDClassifier``, linear regressors...), optionally
  with ``StandardScaler`` or ``PCA`` steps in between: these steps are
  rebuilt as torch layers, so the gradient flows from the linear model's
  decision function back into the backbone.

The attribution itself is captum's ``LayerGradCam`` (imported when used;
``pip install sktransfer[explain]``); its forward hook is removed when each
batch is done.

Examples
--------
>>> import numpy as np
>>> from sktransfer import FineTuneClassifier
>>> from sktransfer.backbones import BackboneSpec, DataConfig
>>> from sktransfer.explain import grad_cam
>>> small = BackboneSpec(arch="efficientnet_lite0", data_config=DataConfig(
...     input_size=64, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3))
>>> rng = np.random.default_rng(0)
>>> X = rng.integers(0, 255, size=(8, 64, 64, 3), dtype=np.uint8)
>>> y = np.repeat(["a", "b"], 4)
>>> clf = FineTuneClassifier(small, max_epochs=1, validation_split=None, verbose=0,
...                          random_state=0).fit(X, y)
>>> cams = grad_cam(clf, X[:2])
>>> cams.shape, bool(cams.min() >= 0), bool(cams.max() <= 1)
((2, 64, 64), True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import _runtime
from ._backbone import StagedNet
from ._modality import get_modality
from ._validation import check_fitted, check_input
from .backbones import Backbone, Pooling
from .exceptions import BackboneError, InputError, import_optional
from .io import ImageDataset, ImageTransform

__all__ = ["grad_cam", "plot_grad_cam"]


# --------------------------------------------------------------------------- the model to explain


@dataclass
class _Explained:
    """What Grad-CAM needs from a fitted estimator."""

    backbone: Backbone
    stop: int  # stages the model runs
    net: StagedNet  # images to logits, with gradients through every stage
    classes: np.ndarray | None  # labels of the logits' columns (None: regression outputs)
    transform: ImageTransform
    device: torch.device
    input_owner: object  # the estimator whose n_features_in_ checks X


class _Affine(nn.Module):
    """``(x - shift) / scale``: a fitted StandardScaler."""

    def __init__(self, shift, scale):
        super().__init__()
        self.register_buffer("shift", torch.as_tensor(np.asarray(shift), dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale), dtype=torch.float32))

    def forward(self, x):
        return (x - self.shift) / self.scale


def _dense(a) -> np.ndarray:
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float64)


def _linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return layer


def _step_layer(name: str, step) -> nn.Module | None:
    """A fitted sklearn step between the extractor and the linear model, as a torch layer."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    if step is None or (isinstance(step, str) and step == "passthrough"):
        return None
    if isinstance(step, StandardScaler):
        check_fitted(step, "n_features_in_")
        shift = step.mean_ if step.mean_ is not None else 0.0
        scale = step.scale_ if step.scale_ is not None else 1.0
        return _Affine(shift, scale)
    if isinstance(step, PCA):
        check_fitted(step, "components_")
        weight = step.components_.astype(np.float64)
        if step.whiten:
            weight = weight / np.sqrt(step.explained_variance_)[:, None]
        return _linear(weight, -weight @ step.mean_)
    raise TypeError(
        f"Grad-CAM needs every pipeline step after the extractor to be differentiable; step "
        f"{name!r} is a {type(step).__name__}. Supported in between: StandardScaler, PCA, "
        "'passthrough'; last: a linear model with coef_ and intercept_."
    )


def _linear_head(name: str, model) -> tuple[nn.Linear, np.ndarray | None]:
    """The decision function of a fitted linear model as ``nn.Linear``, and its classes."""
    if not (hasattr(model, "coef_") and hasattr(model, "intercept_")):
        raise TypeError(
            f"Grad-CAM for a pipeline needs a linear last step with coef_ and intercept_ (e.g. "
            f"LogisticRegression); step {name!r} is a {type(model).__name__}. For a nonlinear "
            "head, train a FineTuneClassifier (head=...) instead."
        )
    coef = _dense(model.coef_)
    classes = getattr(model, "classes_", None)
    if coef.ndim == 1:
        coef = coef[None, :]
    bias = np.broadcast_to(np.atleast_1d(_dense(model.intercept_)), (coef.shape[0],)).copy()
    if classes is not None and len(classes) == 2 and coef.shape[0] == 1:
        # Binary models score only class 1; softmax([-d/2, d/2]) equals sigmoid(d).
        coef = np.vstack([-coef / 2, coef / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2])
    elif classes is not None and coef.shape[0] != len(classes):
        raise TypeError(
            f"{type(model).__name__} has coef_ of shape {coef.shape} for {len(classes)} classes: "
            "not one decision function per class (e.g. a one-vs-one SVC), which Grad-CAM needs."
        )
    return _linear(coef, bias), None if classes is None else np.asarray(classes)


def _explained(estimator) -> _Explained:
    from sklearn.pipeline import Pipeline

    from .extraction import PretrainedFeatureExtractor
    from .finetune import FineTuneClassifier, FineTuneRegressor

    if isinstance(estimator, (FineTuneClassifier, FineTuneRegressor)):
        check_fitted(estimator, "net_")
        module = estimator.net_.module_
        backbone = module.backbone
        stop = len(backbone.stages)
        net = StagedNet(backbone, pooling=module.pool, head=module.head, keep_grad=True)
        return _Explained(
            backbone,
            stop,
            net,
            getattr(estimator, "classes_", None),  # a regressor's targets: output indices
            estimator.transform_,
            estimator.device_,
            estimator,
        )
    if isinstance(estimator, Pipeline):
        extractor = estimator.steps[0][1]
        if not isinstance(extractor, PretrainedFeatureExtractor):
            raise TypeError(
                "Grad-CAM for a Pipeline needs a PretrainedFeatureExtractor as its first step; got "
                f"{type(extractor).__name__}."
            )
        if len(estimator.steps) < 2:
            raise TypeError("Grad-CAM needs a model after the extractor in the Pipeline.")
        check_fitted(extractor, "backbone_")
        layers = [_step_layer(name, step) for name, step in estimator.steps[1:-1]]
        name, model = estimator.steps[-1]
        head, classes = _linear_head(name, model)
        head = nn.Sequential(*[layer for layer in layers if layer is not None], head)
        backbone = extractor.backbone_
        pool = Pooling(extractor.pooling, backbone.num_prefix_tokens)
        net = StagedNet(backbone, stop=extractor.stop_, pooling=pool, head=head, keep_grad=True)
        net = net.to(extractor.device_)
        return _Explained(
            backbone,
            extractor.stop_,
            net,
            classes,
            extractor.transform_,
            extractor.device_,
            extractor,
        )
    raise TypeError(
        "grad_cam explains a fitted FineTuneClassifier or FineTuneRegressor, or a Pipeline of a "
        f"PretrainedFeatureExtractor and a linear model; got {type(estimator).__name__}."
    )


class _PatchGrid(nn.Module):
    """Patch tokens (N, h * w, D) as a feature map (N, D, h, w): the layer Grad-CAM hooks."""

    def __init__(self, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid

    def forward(self, patches):
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *self.grid)


class _TokensAsMap(nn.Module):
    """A token stage whose patch tokens pass through a :class:`_PatchGrid` and back.

    The values are unchanged; the class (and register) tokens bypass the grid, so the
    gradient Grad-CAM reads at ``self.grid`` is that of the patch tokens on their grid."""

    def __init__(self, stage: nn.Module, num_prefix_tokens: int, grid: tuple[int, int]):
        super().__init__()
        self.stage = stage
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = _PatchGrid(grid)

    def forward(self, x):
        tokens = self.stage(x)
        prefix, patches = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens :]
        fmap = self.grid(patches)
        return torch.cat([prefix, fmap.flatten(2).transpose(1, 2)], dim=1)


def _token_grid(shape, num_prefix_tokens: int) -> tuple[int, int] | None:
    """The patch grid (h, w) of a token output (N, T, D) of a square input: the tokens
    after the ``num_prefix_tokens`` class/register tokens, when they form a square of
    more than one position; None otherwise."""
    if shape is None or len(shape) != 3:
        return None
    n_patches = shape[1] - num_prefix_tokens
    side = math.isqrt(max(n_patches, 0))
    if side < 2 or side * side != n_patches:
        return None
    return side, side


def _spatial_stage(ex: _Explained, layer) -> tuple[int, tuple[int, int] | None, int]:
    """Index of the stage whose output Grad-CAM uses (``layer``, or the last one that
    gives a feature map (N, C, H, W) with more than one position, or patch tokens
    (N, T, D) on a square grid), that grid ``(h, w)`` for tokens (None for a map), and
    the number of the model's outputs."""
    bb = ex.backbone
    cfg = bb.data_config
    x = torch.zeros(1, cfg.in_chans, cfg.input_size, cfg.input_size, device=ex.device)
    shapes = []
    with torch.no_grad():
        for stage in ex.backbone.stages[: ex.stop]:
            x = stage(x)
            # only plain tensors can be hooked and reshaped (not the text/HF stage states)
            shapes.append(tuple(x.shape) if isinstance(x, torch.Tensor) else None)
        n_outputs = int(ex.net.head(ex.net.pool(x)).shape[1])

    def feature_map(shape) -> bool:
        return shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1

    def usable(shape) -> bool:
        return feature_map(shape) or _token_grid(shape, bb.num_prefix_tokens) is not None

    def result(index):
        shape = shapes[index]
        grid = None if feature_map(shape) else _token_grid(shape, bb.num_prefix_tokens)
        return index, grid, n_outputs

    names = bb.stage_names[: ex.stop]
    if layer is not None:
        index = bb.stage_index(layer) - 1
        if index >= ex.stop:
            raise BackboneError(
                f"layer={layer!r} comes after the stages this model uses ({names})."
            )
        if not usable(shapes[index]):
            raise BackboneError(
                f"Grad-CAM needs a spatial feature map (N, C, H, W) or patch tokens (N, T, D) on "
                f"a square grid; stage {names[index]!r} of {bb.name!r} gives {shapes[index]}."
            )
        return result(index)
    for index in range(len(shapes) - 1, -1, -1):
        if usable(shapes[index]):
            return result(index)
    listed = ", ".join(f"{n}: {s}" for n, s in zip(names, shapes))
    raise BackboneError(
        f"Grad-CAM needs a spatial feature map (N, C, H, W) with H x W > 1, or patch tokens "
        f"(N, T, D) after {bb.num_prefix_tokens} class/register token(s) on a square grid, and "
        f"no stage of backbone {bb.name!r} gives one ({listed}). Vector (N, D) outputs, as "
        "from pooled networks, are not supported."
    )


def _hooked_net(ex: _Explained, index: int, grid) -> tuple[nn.Module, nn.Module]:
    """The network to run and the layer whose output Grad-CAM reads: the stage itself for
    a feature map, or, for tokens, a reshape of its patch tokens to ``grid``."""
    if grid is None:
        return ex.net, ex.backbone.stages[index]
    stage = _TokensAsMap(ex.backbone.stages[index], ex.backbone.num_prefix_tokens, grid)
    net = StagedNet(
        ex.backbone.replace_stage(index, stage),
        stop=ex.stop,
        pooling=ex.net.pool,
        head=ex.net.head,
        keep_grad=True,
    )
    return net, stage.grid


def _captum():
    attr = import_optional(
        "captum.attr",
        "Grad-CAM uses captum: pip install sktransfer[explain] (or pip install captum).",
    )
    return attr.LayerGradCam, attr.LayerAttribution


# --------------------------------------------------------------------------- computation


def _target_indices(target, classes, n: int, n_outputs: int) -> np.ndarray | None:
    """Column of the logit to explain for each image (None: the predicted one)."""
    if target is None:
        return None
    t = np.asarray(target)
    if t.ndim == 0:
        t = np.full(n, t.item(), dtype=t.dtype)
    if t.shape != (n,):
        raise InputError(
            f"target must be one label or one label per image ({n}); got shape {t.shape}."
        )
    if classes is None:
        if not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= n_outputs:
            raise InputError(
                f"target must be an output index in 0..{n_outputs - 1} for this model; got "
                f"{np.unique(t)[:5].tolist()}."
            )
        return t.astype(np.int64)
    unknown = [v for v in np.unique(t) if v not in set(classes.tolist())]
    if unknown:
        raise InputError(
            f"target {unknown[:5]} is not among the model's classes {classes.tolist()[:20]}."
        )
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    return np.array([lookup[v] for v in t.tolist()], dtype=np.int64)


def _normalize(cams: torch.Tensor) -> np.ndarray:
    """Scale each map to [0, 1] (an all-zero map stays zero)."""
    flat = cams.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return scaled.view_as(cams).cpu().numpy().astype(np.float32)


def _compute(estimator, X, target, layer, batch_size: int):
    """Heatmaps (n, H, W), the preprocessed images (n, C, H, W), explained columns, classes."""
    LayerGradCam, LayerAttribution = _captum()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    ex = _explained(estimator)
    modality = get_modality(ex.backbone)
    if not modality.spatial:
        raise BackboneError(
            f"Grad-CAM maps the gradient back onto the input image, and {ex.backbone.name!r} is "
            f"a {modality.name} backbone. Explain an image model (a FineTuneClassifier or a "
            "Pipeline on an image backbone)."
        )
    X = check_input(ex.input_owner, X, reset=False)
    source = modality.as_source(X)
    dataset = ImageDataset(source, ex.transform)
    n = len(source)
    modes = {m: m.training for m in ex.net.modules()}
    ex.net.eval()  # BatchNorm statistics and no dropout, as in predict
    try:
        index, grid, n_outputs = _spatial_stage(ex, layer)
        wanted = _target_indices(target, ex.classes, n, n_outputs)
        net, hooked = _hooked_net(ex, index, grid)
        cam = LayerGradCam(net, hooked)
        size = ex.backbone.data_config.input_size
        cams, images, columns = [], [], []
        batches = _runtime.inference_batches(dataset, batch_size=batch_size, device=ex.device)
        for batch, idx in batches:
            x = _runtime.to_device(batch, ex.device)
            if wanted is None:
                with torch.no_grad():
                    cols = net(x).argmax(dim=1)
            else:
                cols = torch.as_tensor(wanted[idx.numpy()], device=ex.device)
            attr = cam.attribute(x, target=cols.tolist(), relu_attributions=True)
            attr = LayerAttribution.interpolate(attr.detach().float(), (size, size), "bilinear")
            cams.append(_normalize(attr[:, 0]))
            images.append(batch.numpy())
            columns.append(cols.cpu().numpy())
    finally:
        for m, mode in modes.items():
            m.training = mode
    return (
        np.concatenate(cams),
        np.concatenate(images),
        np.concatenate(columns),
        ex.classes,
        ex.backbone.data_config,
    )


def grad_cam(estimator, X, target=None, *, layer=None, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM heatmaps of a fitted model for images ``X``.

    Parameters
    ----------
    estimator : FineTuneClassifier, FineTuneRegressor or Pipeline
        A fitted :class:`~sktransfer.FineTuneClassifier` or
        :class:`~sktransfer.FineTuneRegressor`, or a fitted
        ``Pipeline`` of a :class:`~sktransfer.PretrainedFeatureExtractor`,
        optional ``StandardScaler``/``PCA`` steps and a linear model with
        ``coef_`` and ``intercept_``.
    X : images
        Anything the estimator accepts.
    target : label, array-like of labels, or None, default=None
        The class whose logit is explained: one label (an element of
        ``classes_``) for all images, or one per image. ``None`` explains each
        image's predicted class. For a regressor, the output index.
    layer : str, int or None, default=None
        Backbone stage whose output is the feature map. ``None``: the last
        stage with a spatial output: a map (N, C, H, W), H x W > 1, or
        transformer tokens (N, T, D) whose patch tokens (after the
        ``num_prefix_tokens`` class/register tokens) form a square grid,
        which are reshaped to (N, D, h, w).
    batch_size : int, default=16
        Images per forward and backward pass.

    Returns
    -------
    ndarray of shape (n_samples, H, W), float32
        One map per image, at the backbone's input size (``H = W =
        data_config.input_size``), each scaled to [0, 1] (1 at its peak; all
        zeros where no position supports the class). It is aligned with the
        preprocessed image (after resize and center crop), not the original.

    Raises
    ------
    BackboneError
        When the backbone has no spatial feature map or patch-token grid
        (pooled vectors only), or ``layer`` is not such a stage.
    TypeError
        For an estimator that is not one of the supported kinds.
    MissingDependencyError
        When captum is not installed.

    See Also
    --------
    plot_grad_cam : draw the maps over the images.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> from sktransfer.backbones import BackboneSpec, DataConfig
    >>> small = BackboneSpec(arch="efficientnet_lite0", data_config=DataConfig(
    ...     input_size=64, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3))
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 255, size=(8, 64, 64, 3), dtype=np.uint8)
    >>> model = make_pipeline(PretrainedFeatureExtractor(small),
    ...                       LogisticRegression()).fit(X, [0, 1] * 4)
    >>> grad_cam(model, X[:3], target=1).shape
    (3, 64, 64)
    """
    return _compute(estimator, X, target, layer, batch_size)[0]


def _display_images(images: np.ndarray, config) -> np.ndarray:
    """Undo the normalisation: (n, C, H, W) -> (n, H, W, 3) in [0, 1]."""
    mean = np.asarray(config.mean[: images.shape[1]], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(config.std[: images.shape[1]], dtype=np.float32).reshape(1, -1, 1, 1)
    rgb = np.clip(images * std + mean, 0.0, 1.0).transpose(0, 2, 3, 1)
    return np.repeat(rgb, 3, axis=3) if rgb.shape[3] == 1 else rgb


def plot_grad_cam(
    estimator,
    X,
    target=None,
    *,
    ax=None,
    alpha: float = 0.5,
    cmap: str = "jet",
    layer=None,
    ncols: int = 4,
    batch_size: int = 16,
):
    """Draw Grad-CAM heatmaps over the preprocessed images with matplotlib.

    Parameters
    ----------
    estimator, X, target, layer, batch_size
        As for :func:`grad_cam`.
    ax : matplotlib Axes, array of Axes, or None, default=None
        Where to draw, one Axes per image. ``None`` makes a new figure with
        ``ncols`` columns.
    alpha : float, default=0.5
        Opacity of the heatmap over the image.
    cmap : str, default="jet"
        Colormap of the heatmap.
    ncols : int, default=4
        Columns of the new figure (when ``ax`` is None).

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on; each image's title is the explained class.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> from sktransfer.backbones import BackboneSpec, DataConfig
    >>> small = BackboneSpec(arch="efficientnet_lite0", data_config=DataConfig(
    ...     input_size=64, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3))
    >>> X = np.random.default_rng(0).integers(0, 255, size=(4, 64, 64, 3), dtype=np.uint8)
    >>> model = make_pipeline(PretrainedFeatureExtractor(small),
    ...                       LogisticRegression()).fit(X, ["cat", "dog"] * 2)
    >>> fig = plot_grad_cam(model, X[:2])
    >>> [a.get_title() for a in fig.axes[:2]] == [str(c) for c in model.predict(X[:2])]
    True
    """
    plt = import_optional(
        "matplotlib.pyplot", "plot_grad_cam draws with matplotlib: pip install sktransfer[explain]."
    )
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha!r}.")
    cams, images, columns, classes, config = _compute(estimator, X, target, layer, batch_size)
    n = len(cams)
    if ax is None:
        ncols = max(1, min(int(ncols), n))
        nrows = math.ceil(n / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols, 2.5 * nrows), squeeze=False)
        axes = axes.ravel()
        for extra in axes[n:]:
            extra.set_axis_off()
    else:
        axes = np.ravel(np.asarray(ax, dtype=object))
        if len(axes) < n:
            raise InputError(f"Got {len(axes)} Axes for {n} images; give one Axes per image.")
        fig = axes[0].figure
    rgb = _display_images(images, config)
    for i in range(n):
        a = axes[i]
        a.imshow(rgb[i])
        a.imshow(cams[i], cmap=cmap, alpha=float(alpha), vmin=0.0, vmax=1.0)
        label = classes[columns[i]] if classes is not None else columns[i]
        a.set_title(str(label))
        a.set_axis_off()
    return fig
