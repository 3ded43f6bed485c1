"""Resumable extraction of large collections into feature shards on disk.

:func:`extract_to_shards` splits the items into fixed-size chunks and writes
one ``.npy`` shard per chunk next to a manifest. A shard is written to a
temporary file and renamed into place, so after a crash, a kill or Ctrl-C the
finished shards are complete and are skipped on the next run, and a
half-written one is never read as complete. Memory stays flat: one chunk of
images is in flight at a time (and the extractor itself streams by batch).

Layout of ``out``::

    manifest.json        # format, item count, shard size, feature count, extractor
    items.jsonl          # one JSON string per item (path or text), in order
    shard-000000.npy     # float32 (rows of chunk 0, n_features)
    ...

Examples
--------
>>> import tempfile, numpy as np
>>> from sklearn.datasets import load_digits
>>> from sktransfer import PretrainedFeatureExtractor
>>> X = list(load_digits().images[:6])
>>> out = extract_to_shards(X, tempfile.mkdtemp(), PretrainedFeatureExtractor(batch_size=3),
...                         shard_size=4)
>>> load_shards(out).shape
(6, 1280)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from sklearn.base import clone

from ._files import atomic_write, save_npy
from .exceptions import InputError

__all__ = ["extract_to_shards", "load_shards", "shard_status"]

_FORMAT = "sktransfer-shards-v1"
# Parameters that change how fast features are computed, not their values: a run may be
# resumed with other values of these (e.g. a larger batch on a bigger machine).
_RUNTIME_PARAMS = frozenset({"batch_size", "num_workers", "verbose", "memory"})


def _item_repr(item) -> str:
    """A path or text as itself; an in-memory image by its type and a hash of its content.

    The hash makes the items digest tell two lists of same-sized arrays apart, so a
    resumed run never returns shards computed from other images.
    """
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    import joblib

    return f"<{type(item).__name__} item {joblib.hash(item)}>"


def _feature_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in _RUNTIME_PARAMS}


def _items_digest(lines: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    # synced: a shard that exists after a power cut is complete, not empty
    array = np.ascontiguousarray(array, dtype=np.float32)
    atomic_write(path, lambda tmp: save_npy(tmp, array), sync=True)


def extract_to_shards(
    X,
    out,
    extractor=None,
    *,
    shard_size: int = 1024,
    resume: bool = True,
    verbose: int = 0,
) -> Path:
    """Extract features of ``X`` into shards under ``out``, resuming finished work.

    Parameters
    ----------
    X : folder path, or sequence of paths, texts or in-memory images
        A folder is listed with :func:`sktransfer.datasets.load_image_folder`.
    out : str or Path
        Output folder (created).
    extractor : PretrainedFeatureExtractor, optional
        Its parameters are used (it is cloned and fitted once). Default: the
        default extractor.
    shard_size : int, default=1024
        Items per shard.
    resume : bool, default=True
        Skip shards that are already complete. A run may resume with other
        ``batch_size``, ``num_workers``, ``verbose`` or ``memory`` (they do
        not change the features); other items or other extractor parameters
        are an error. With ``False`` the shards of the same extraction are
        deleted and computed again.
    verbose : int, default=0
        1 prints one line per shard.

    Returns
    -------
    Path
        ``out``.

    Examples
    --------
    A tiny untrained backbone keeps the example fast; any extractor works the same.

    >>> import tempfile
    >>> import torch
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> from sktransfer.backbones import BackboneSpec, DataConfig
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    >>> spec = BackboneSpec(module=net, data_config=DataConfig(input_size=8, resize_size=None))
    >>> X = list(load_digits().images[:6])
    >>> out = extract_to_shards(X, tempfile.mkdtemp(), PretrainedFeatureExtractor(spec),
    ...                         shard_size=4)
    >>> sorted(p.name for p in out.iterdir())
    ['items.jsonl', 'manifest.json', 'shard-000000.npy', 'shard-000001.npy']

    After an interruption, the same call computes only the missing shards:

    >>> (out / "shard-000001.npy").unlink()
    >>> out = extract_to_shards(X, out, PretrainedFeatureExtractor(spec), shard_size=4, verbose=1)
    shard 2/2: 2 items -> shard-000001.npy
    >>> load_shards(out).shape
    (6, 4)
    """
    from .extraction import PretrainedFeatureExtractor

    if isinstance(X, (str, os.PathLike)) and os.path.isdir(X):
        from .datasets import load_image_folder

        X = list(load_image_folder(X).data)
    items = list(X)
    if not items:
        raise InputError("Nothing to extract: X is empty.")
    if shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(_item_repr(it)) for it in items]
    extractor = clone(extractor if extractor is not None else PretrainedFeatureExtractor())
    params = {k: repr(v) for k, v in sorted(extractor.get_params(deep=False).items())}
    manifest = {
        "format": _FORMAT,
        "n_items": len(items),
        "shard_size": shard_size,
        "n_shards": -(-len(items) // shard_size),
        "items_digest": _items_digest(lines),
        "extractor": params,
    }
    _check_or_write_manifest(out, manifest, lines, resume)
    for f in out.glob(".*.tmp"):  # left by a killed run: never complete, never read
        f.unlink(missing_ok=True)
    todo = [k for k in range(manifest["n_shards"]) if not _shard_path(out, k).exists()]
    if todo:
        extractor.fit(items[:1])
    for k in todo:
        chunk = items[k * shard_size : (k + 1) * shard_size]
        feats = extractor.transform(chunk)
        _atomic_save_npy(_shard_path(out, k), feats)
        if verbose:
            print(
                f"shard {k + 1}/{manifest['n_shards']}: {len(chunk)} items -> {_shard_path(out, k).name}"
            )
    if "n_features" not in manifest:
        n_features = int(np.load(_shard_path(out, 0), mmap_mode="r").shape[1])
        manifest["n_features"] = n_features
        _atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    return out


def _shard_path(out: Path, k: int) -> Path:
    return out / f"shard-{k:06d}.npy"


def _check_or_write_manifest(out: Path, manifest: dict, lines: list[str], resume: bool) -> None:
    path = out / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        same = all(
            old.get(k) == manifest[k] for k in ("format", "n_items", "shard_size", "items_digest")
        )
        same = same and _feature_params(old.get("extractor", {})) == _feature_params(
            manifest["extractor"]
        )
        if same and resume:
            manifest.update({k: v for k, v in old.items() if k == "n_features"})
            return
        if same and not resume:
            for k in range(manifest["n_shards"]):
                _shard_path(out, k).unlink(missing_ok=True)
        else:
            raise InputError(
                f"{out} already holds shards for other items or extractor settings "
                f"({old.get('n_items')} items, shard_size={old.get('shard_size')}). Use another "
                "output folder, or delete this one."
            )
    _atomic_write_bytes(out / "items.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
    _atomic_write_bytes(path, json.dumps(manifest, indent=1).encode())


def shard_status(out) -> dict:
    """How many shards of ``out`` are complete: ``{"done": d, "total": t, "complete": bool}``.

    Examples
    --------
    >>> import tempfile
    >>> import torch
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> from sktransfer.backbones import BackboneSpec, DataConfig
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    >>> spec = BackboneSpec(module=net, data_config=DataConfig(input_size=8, resize_size=None))
    >>> X = list(load_digits().images[:6])
    >>> out = extract_to_shards(X, tempfile.mkdtemp(), PretrainedFeatureExtractor(spec),
    ...                         shard_size=2)
    >>> shard_status(out)
    {'done': 3, 'total': 3, 'complete': True}
    >>> (out / "shard-000002.npy").unlink()  # as if the run had been interrupted
    >>> shard_status(out)
    {'done': 2, 'total': 3, 'complete': False}
    """
    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text())
    done = sum(_shard_path(out, k).exists() for k in range(manifest["n_shards"]))
    return {"done": done, "total": manifest["n_shards"], "complete": done == manifest["n_shards"]}


def load_shards(out, *, mmap: bool = False, return_items: bool = False):
    """Concatenate the shards of a complete extraction (features in item order).

    Raises
    ------
    InputError
        If some shards are missing (run :func:`extract_to_shards` again to finish).

    Examples
    --------
    >>> import tempfile
    >>> import torch
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> from sktransfer.backbones import BackboneSpec, DataConfig
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    >>> spec = BackboneSpec(module=net, data_config=DataConfig(input_size=8, resize_size=None))
    >>> X = list(load_digits().images[:6])
    >>> out = extract_to_shards(X, tempfile.mkdtemp(), PretrainedFeatureExtractor(spec),
    ...                         shard_size=4)
    >>> features, items = load_shards(out, return_items=True)
    >>> features.shape, features.dtype, len(items)
    ((6, 4), dtype('float32'), 6)
    >>> items[0]  # in-memory images are named by their type and a content hash
    '<ndarray item ...>'
    >>> (out / "shard-000000.npy").unlink()
    >>> load_shards(out)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    sktransfer.exceptions.InputError: ... is incomplete: 1 of 2 shards. Run the same extraction ...
    """
    out = Path(out)
    status = shard_status(out)
    if not status["complete"]:
        raise InputError(
            f"{out} is incomplete: {status['done']} of {status['total']} shards. Run the same "
            "extraction again to resume it."
        )
    parts = [
        np.load(_shard_path(out, k), mmap_mode="r" if mmap else None)
        for k in range(status["total"])
    ]
    feats = np.concatenate(parts) if not mmap else np.concatenate([np.asarray(p) for p in parts])
    if return_items:
        with open(out / "items.jsonl", encoding="utf-8") as f:
            items = [json.loads(line) for line in f if line.strip()]
        return feats, items
    return feats
