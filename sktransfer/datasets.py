"""Datasets: image folders laid out one sub-folder per class."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from .exceptions import InputError
from .io import is_image_path

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
    if not root.is_dir():
        raise InputError(f"Image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[str] = []
    targets: list[int] = []
    if classes:
        for label, cls in enumerate(classes):
            for dirpath, dirnames, filenames in os.walk(root / cls):
                dirnames.sort()
                for f in sorted(filenames):
                    if is_image_path(f):
                        paths.append(os.path.join(dirpath, f))
                        targets.append(label)
    else:
        paths = [str(p) for p in sorted(root.iterdir()) if p.is_file() and is_image_path(p)]
        targets = [0] * len(paths)
    if not paths:
        raise InputError(
            f"No image files found under {root}; expected root/<class>/<image> with extensions "
            "such as .jpg or .png."
        )
    data = np.empty(len(paths), dtype=object)
    data[:] = paths
    target = np.asarray(targets, dtype=np.int64)
    if return_X_y:
        return data, target
    return Bunch(data=data, target=target, target_names=classes or [root.name], root=str(root))
