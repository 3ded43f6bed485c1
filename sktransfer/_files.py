"""Atomic file writes: a file that exists is complete, never half-written.

Every writer in the package (shards and their manifest, activation-cache
entries, fine-tuning checkpoints, the command line's outputs) goes through
:func:`atomic_write`, so a killed process or two processes writing the same
file at once never leave a truncated file that a later run reads as complete.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np


def atomic_write(path, write: Callable[[Path], None], *, sync: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    The temporary name is unique to this process and call (``.<name>.<pid>.<random>.tmp``),
    so concurrent writers never share one; it is removed if ``write`` fails. With
    ``sync=True`` the data reach the disk before the rename, so the file is complete
    after a power cut too.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sktransfer._files import atomic_write
    >>> path = atomic_write(Path(tempfile.mkdtemp()) / "sub" / "a.txt", lambda tmp: tmp.write_text("hi"))
    >>> path.read_text(), [p.name for p in path.parent.iterdir()]
    ('hi', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_npy(path, array) -> None:
    """``np.save`` to exactly ``path`` (given a path, ``np.save`` appends ``.npy``).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "x.tmp"
    >>> save_npy(path, np.arange(3))
    >>> np.load(path).tolist()
    [0, 1, 2]
    """
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
