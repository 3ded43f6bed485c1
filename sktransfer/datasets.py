"""Datasets: image folders laid out one sub-folder per class."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from .io import list_image_folder

__all__ = ["load_image_folder"]


def load_image_folder(root: str | os.PathLike, *, return_X_y: bool = False):
    """Load a folder of images laid out as ``root/<class_name>/<image file>``.

    Files are listed (not decoded) in sorted order; classes are the sorted
    sub-folder names. Files whose extension is not an image extension are
    skipped. A folder of images with no sub-folders gives one unnamed class.

    Parameters
    ----------
    root : str or Path
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    Bunch with ``data`` (object array of paths), ``target`` (int array),
    ``target_names`` (list of class names) and ``root``; or ``(data, target)``.

    Examples
    --------
    >>> import tempfile, os
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> for cls in ("cat", "dog"):
    ...     os.makedirs(os.path.join(root, cls))
    ...     Image.new("RGB", (8, 8)).save(os.path.join(root, cls, "a.png"))
    >>> ds = load_image_folder(root)
    >>> ds.target_names, ds.target.tolist()
    (['cat', 'dog'], [0, 1])
    """
    root = Path(root)
    paths, targets, classes = list_image_folder(root)
    data = np.empty(len(paths), dtype=object)
    data[:] = paths
    target = np.asarray(targets, dtype=np.int64)
    if return_X_y:
        return data, target
    return Bunch(data=data, target=target, target_names=classes or [root.name], root=str(root))
