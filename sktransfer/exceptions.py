"""Errors and warnings raised by sktransfer.

Every error a user can trigger derives from :class:`SktransferError`, so that
``except SktransferError`` catches them all, and each also derives from the
builtin class a scikit-learn user would expect (``ValueError``, ``TypeError``,
``ImportError``), so existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SkNotFittedError

__all__ = [
    "SktransferError",
    "BackboneError",
    "BackboneNotAvailableError",
    "InputError",
    "ItemLoadError",
    "MissingDependencyError",
    "NotFittedError",
    "CheckpointError",
    "DeviceError",
    "TrainingDivergedError",
    "ExportError",
    "SktransferWarning",
    "ItemLoadWarning",
    "DeviceWarning",
]


class SktransferError(Exception):
    """Base class of every error raised by sktransfer.

    Examples
    --------
    One ``except`` clause catches every error of the library:

    >>> from sktransfer.io import as_image_source
    >>> try:
    ...     as_image_source([])
    ... except SktransferError as exc:
    ...     print(type(exc).__name__, "-", exc)
    InputError - X is empty (0 items); expected at least one image.
    >>> errors = [BackboneError, BackboneNotAvailableError, InputError, ItemLoadError,
    ...           MissingDependencyError, NotFittedError, CheckpointError, TrainingDivergedError]
    >>> all(issubclass(e, SktransferError) for e in errors)
    True
    """


class BackboneError(SktransferError, ValueError):
    """A backbone name, module or option is invalid (unknown name, bad layer...).

    Examples
    --------
    An unknown backbone name is reported by ``fit``, with the known names:

    >>> from sktransfer import PretrainedFeatureExtractor
    >>> PretrainedFeatureExtractor("no-such-backbone").fit()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    sktransfer.exceptions.BackboneError: Unknown backbone 'no-such-backbone'. Registered: [...
    >>> issubclass(BackboneError, ValueError)
    True
    """


class BackboneNotAvailableError(BackboneError):
    """The backbone exists but its weights cannot be obtained here (offline, not installed).

    Raised, for example, by :func:`sktransfer.backbones.load_backbone` for a
    registered backbone whose weights package is not installed, or for a
    torchvision or timm model whose weights cannot be downloaded.

    Examples
    --------
    >>> issubclass(BackboneNotAvailableError, BackboneError)
    True
    >>> issubclass(BackboneNotAvailableError, ValueError)
    True
    """


class InputError(SktransferError, ValueError):
    """The input ``X`` (or ``y``) has the wrong type, shape, dtype or content.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.io import as_image_source
    >>> as_image_source(np.zeros(5))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    sktransfer.exceptions.InputError: Got a 1-D numeric array of shape (5,): expected (n, d) ...
    >>> issubclass(InputError, ValueError)
    True
    """


class ItemLoadError(InputError):
    """One input item (a file, an image, a row) could not be read or decoded.

    Attributes
    ----------
    index : int
        Position of the item in the input.
    item : str
        A short description of the item (its path, or its type for in-memory items).
    reason : str
        What went wrong, without the remedy.
    remedy : str or None
        What to do, for the estimator that raised it (e.g. its ``on_error`` option).

    Examples
    --------
    Image files that do not exist are reported before any computation starts:

    >>> from sktransfer.io import as_image_source
    >>> try:
    ...     as_image_source(["no-such-file.jpg"])
    ... except ItemLoadError as exc:
    ...     print(exc.index, exc.item)
    ...     print(exc)  # doctest: +ELLIPSIS
    0 no-such-file.jpg
    1 of 1 image files not found (0: 'no-such-file.jpg'). Fix the paths, or pass on_error='warn' ...
    >>> issubclass(ItemLoadError, InputError)
    True
    """

    def __init__(
        self,
        message: str,
        index: int | None = None,
        item: str | None = None,
        remedy: str | None = None,
    ):
        super().__init__(f"{message} {remedy}" if remedy else message)
        self.index = index
        self.item = item
        self.reason = message  # what went wrong, without the remedy
        self.remedy = remedy  # what the raising estimator offers (``on_error``...)


class CheckpointError(SktransferError, ValueError):
    """A checkpoint or weights file is unreadable, untrusted, or for another architecture.

    Examples
    --------
    >>> from sktransfer.backbones import load_backbone
    >>> load_backbone("no-such-checkpoint.pt")
    Traceback (most recent call last):
        ...
    sktransfer.exceptions.CheckpointError: Checkpoint file not found: no-such-checkpoint.pt
    """


class DeviceError(SktransferError, ValueError):
    """The ``device`` parameter names no device torch can use.

    Examples
    --------
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> PretrainedFeatureExtractor(device="gpu").fit()
    Traceback (most recent call last):
        ...
    sktransfer.exceptions.DeviceError: device='gpu' is not a device. Valid: 'auto', 'cpu', 'cuda', 'cuda:N' (N a GPU index) or 'mps'.
    """


class TrainingDivergedError(SktransferError, RuntimeError):
    """Training produced a non-finite loss.

    Raised during :meth:`sktransfer.FineTuneClassifier.fit` when a batch loss
    becomes NaN or infinite; the message suggests a lower ``lr`` or
    ``precision="fp32"``.

    Examples
    --------
    >>> issubclass(TrainingDivergedError, RuntimeError)
    True
    """


class ExportError(SktransferError, ValueError):
    """A fitted estimator cannot be exported for serving (see :func:`sktransfer.export`):
    not fitted, not an exportable estimator, a layer the exporter cannot convert (the
    message names it), or a text tokenizer that the ``tokenizers`` library cannot
    reproduce for a service.

    Examples
    --------
    >>> from sktransfer import PretrainedFeatureExtractor, export
    >>> export(PretrainedFeatureExtractor(), "features.onnx")
    Traceback (most recent call last):
        ...
    sktransfer.exceptions.ExportError: PretrainedFeatureExtractor is not fitted: call fit before export.
    """


class MissingDependencyError(SktransferError, ImportError):
    """An optional dependency is needed for this feature; the message says what to install.

    Examples
    --------
    Code that already handles a missing module with ``except ImportError`` keeps
    working:

    >>> try:
    ...     raise MissingDependencyError("This needs Dask: pip install 'sktransfer[dask]'")
    ... except ImportError as exc:
    ...     print(exc)
    This needs Dask: pip install 'sktransfer[dask]'
    """


def import_optional(module: str, message: str):
    """Import ``module``, or raise :class:`MissingDependencyError` with ``message``
    (which says what to install). The one way optional dependencies are imported.

    Examples
    --------
    >>> import_optional("json", "never needed").__name__
    'json'
    >>> import_optional("no_such_module", "pip install no-such-module")
    Traceback (most recent call last):
        ...
    sktransfer.exceptions.MissingDependencyError: pip install no-such-module
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(message) from exc


class NotFittedError(SktransferError, _SkNotFittedError):
    """The estimator is used before ``fit``.

    It is also scikit-learn's ``NotFittedError``, so ``sklearn.utils.validation``
    checks and existing ``except`` clauses recognise it.

    Examples
    --------
    >>> import numpy as np
    >>> import sklearn.exceptions
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> try:
    ...     PretrainedFeatureExtractor().transform(np.zeros((2, 8, 8)))
    ... except sklearn.exceptions.NotFittedError as exc:
    ...     print(type(exc).__name__, "-", exc)  # doctest: +ELLIPSIS
    NotFittedError - This PretrainedFeatureExtractor instance is not fitted yet. ...
    """


class SktransferWarning(UserWarning):
    """Base class of every warning issued by sktransfer.

    Examples
    --------
    Silence (or turn into errors) all of the library's warnings at once:

    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", SktransferWarning)
    ...     warnings.warn("not shown", DeviceWarning)
    >>> issubclass(ItemLoadWarning, SktransferWarning), issubclass(SktransferWarning, UserWarning)
    (True, True)
    """


class ItemLoadWarning(SktransferWarning):
    """Some input items could not be read and were replaced by NaN rows.

    Issued with ``on_error="warn"``; with the default ``on_error="raise"``
    the same item raises :class:`ItemLoadError` instead.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> import torch
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> from sktransfer.backbones import BackboneSpec, DataConfig
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    >>> spec = BackboneSpec(module=net, data_config=DataConfig(input_size=8, resize_size=None))
    >>> extractor = PretrainedFeatureExtractor(spec, on_error="warn").fit()
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     features = extractor.transform(["no-such-file.png"])
    >>> features.shape, bool(np.isnan(features).all())
    ((1, 4), True)
    >>> print(caught[0].category.__name__, "-", caught[0].message)  # doctest: +ELLIPSIS
    ItemLoadWarning - 1 of 1 items could not be read and are NaN rows: ... No such file ...
    """


class DeviceWarning(SktransferWarning):
    """The requested device or precision is not available and another one is used.

    Issued, for example, when ``device="cuda"`` is requested on a machine
    without CUDA (the CPU is used), or when a batch runs out of GPU memory and
    is retried at half the size.

    Examples
    --------
    >>> issubclass(DeviceWarning, SktransferWarning)
    True
    """
