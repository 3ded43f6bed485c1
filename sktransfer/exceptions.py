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
    "TrainingDivergedError",
    "SktransferWarning",
    "ItemLoadWarning",
    "DeviceWarning",
]


class SktransferError(Exception):
    """Base class of every error raised by sktransfer."""


class BackboneError(SktransferError, ValueError):
    """A backbone name, module or option is invalid (unknown name, bad layer...)."""


class BackboneNotAvailableError(BackboneError):
    """The backbone exists but its weights cannot be obtained here (offline, not installed)."""


class InputError(SktransferError, ValueError):
    """The input ``X`` (or ``y``) has the wrong type, shape, dtype or content."""


class ItemLoadError(InputError):
    """One input item (a file, an image, a row) could not be read or decoded.

    Attributes
    ----------
    index : int
        Position of the item in the input.
    item : str
        A short description of the item (its path, or its type for in-memory items).
    """

    def __init__(self, message: str, index: int | None = None, item: str | None = None):
        super().__init__(message)
        self.index = index
        self.item = item


class CheckpointError(SktransferError, ValueError):
    """A checkpoint or weights file is unreadable, untrusted, or for another architecture."""


class TrainingDivergedError(SktransferError, RuntimeError):
    """Training produced a non-finite loss."""


class MissingDependencyError(SktransferError, ImportError):
    """An optional dependency is needed for this feature; the message says what to install."""


class NotFittedError(SktransferError, _SkNotFittedError):
    """The estimator is used before ``fit``."""


class SktransferWarning(UserWarning):
    """Base class of every warning issued by sktransfer."""


class ItemLoadWarning(SktransferWarning):
    """Some input items could not be read and were replaced by NaN rows."""


class DeviceWarning(SktransferWarning):
    """The requested device or precision is not available and another one is used."""
