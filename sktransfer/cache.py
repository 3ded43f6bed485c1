"""Activation cache: compute a frozen network's outputs once per image, reuse them.

Both estimators take ``memory=`` (like ``Pipeline(memory=...)``): ``None``
keeps reuse inside one ``fit``; a folder path, a :class:`joblib.Memory` or a
:class:`FeatureMemory` also keeps activations on disk, across fits, grid
candidates, CV folds and processes.

Keys. An entry is keyed by (the frozen module's weights, buffers and
structure, the preprocessing, the precision, the cut point and pooling) and
by the item's *content* (a file's bytes, an array's or image's pixels), so a
changed file, other weights or another layer never give a stale hit.
A file is read and hashed once per process while its stat identity (device,
inode, size, modification and change times) holds, and at every lookup while it
was changed in the last two seconds (a write within one clock tick could keep
the times). The nested frozen prefixes that a fit keys share their stages'
digests (:func:`module_fingerprints`).

Layout and safety. Entries live under
``<location>/sktransfer-activations/<model key>/<2 hex>/<item key>.npy``.
Each is written to a temporary file and renamed into place (atomic on POSIX
and Windows), so two processes writing at once, or a process killed
mid-write, never leave a half-written entry that is read back; an unreadable
entry counts as a miss and is recomputed. The cache is bounded: past
``max_bytes`` the least recently used entries are deleted.

Examples
--------
>>> import tempfile
>>> mem = FeatureMemory(tempfile.mkdtemp(), max_bytes=10**6)
>>> mem.put("model", ["a"], [np.ones(3, dtype=np.float32)])
>>> mem.get("model", ["a", "b"])[0].tolist(), mem.get("model", ["b"])[0]
([1.0, 1.0, 1.0], None)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._backbone import StagedNet
from ._files import atomic_write, save_npy

__all__ = [
    "FeatureMemory",
    "resolve_memory",
    "module_fingerprint",
    "module_fingerprints",
    "cached_inference",
    "cached_prefix_inference",
    "stats",
]

# 2: weights keyed by the digest of each tensor (each hashed once for several prefixes)
FORMAT_VERSION = 2
DEFAULT_MAX_BYTES = 20 * 1024**3
_SUBDIR = "sktransfer-activations"
_STALE_TMP_SECONDS = 3600
_STATS = {"hits": 0, "misses": 0}
# Content keys of files already hashed, by path and stat identity (device, inode, size,
# modification and change times in ns): a rewritten file has a new ctime, so a new entry.
# Files changed in the last _RACY_SECONDS are hashed every time (a write within the
# same clock tick could keep the times, as git's "racy" index entries).
_FILE_KEYS: dict[tuple, bytes] = {}
_FILE_KEYS_MAX = 200_000
_RACY_SECONDS = 2.0


def stats(reset: bool = False) -> dict:
    """Hits and misses of the disk cache in this process (for tests and benchmarks).

    Parameters
    ----------
    reset : bool, default=False
        Set both counters to zero after reading them.

    Examples
    --------
    >>> from sktransfer.cache import stats
    >>> _ = stats(reset=True)
    >>> stats()
    {'hits': 0, 'misses': 0}
    """
    out = dict(_STATS)
    if reset:
        _STATS.update(hits=0, misses=0)
    return out


class FeatureMemory:
    """A bounded on-disk store of activations (see the module docstring).

    Parameters
    ----------
    location : str or Path
        Folder; entries go to ``location/sktransfer-activations/``.
    max_bytes : int, default=20 GiB
        Size bound; least recently used entries are evicted past it.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sktransfer.cache import FeatureMemory
    >>> memory = FeatureMemory(tempfile.mkdtemp(), max_bytes=10**6)
    >>> memory.put("model-key", ["item-a"], [np.arange(3, dtype=np.float32)])
    >>> [None if a is None else a.tolist() for a in memory.get("model-key", ["item-a", "item-b"])]
    [[0.0, 1.0, 2.0], None]
    >>> memory.size() > 0
    True
    """

    def __init__(self, location, max_bytes: int = DEFAULT_MAX_BYTES):
        self.location = location
        self.max_bytes = max_bytes

    @property
    def root(self) -> Path:
        return Path(self.location) / _SUBDIR

    def _path(self, model_key: str, item_key: str) -> Path:
        return self.root / model_key / item_key[:2] / f"{item_key}.npy"

    def get(self, model_key: str, item_keys) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for key in item_keys:
            path = self._path(model_key, key)
            try:
                arr = np.load(path, allow_pickle=False)
                os.utime(path)  # recently used: evicted last
            except (OSError, ValueError, EOFError):
                arr = None
                if path.exists():  # unreadable entry: drop it, it will be recomputed
                    path.unlink(missing_ok=True)
            out.append(arr)
        return out

    def put(self, model_key: str, item_keys, arrays) -> None:
        written = 0
        for key, arr in zip(item_keys, arrays):
            data = np.ascontiguousarray(arr)
            path = atomic_write(self._path(model_key, key), lambda tmp, a=data: save_npy(tmp, a))
            written += path.stat().st_size
        if written:
            self.evict()

    def size(self) -> int:
        return sum(f.stat().st_size for f in self._files())

    def _files(self):
        if not self.root.exists():
            return []
        return [Path(d) / f for d, _, files in os.walk(self.root) for f in files]

    def evict(self) -> None:
        """Delete stale temporary files, then least recently used entries past ``max_bytes``."""
        now = time.time()
        entries = []
        for f in self._files():
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            if f.suffix == ".tmp":
                if now - st.st_mtime > _STALE_TMP_SECONDS:
                    f.unlink(missing_ok=True)
                continue
            entries.append((st.st_mtime, st.st_size, f))
        total = sum(e[1] for e in entries)
        if total <= self.max_bytes:
            return
        for _, size, f in sorted(entries, key=lambda e: e[0]):
            f.unlink(missing_ok=True)
            total -= size
            if total <= 0.9 * self.max_bytes:
                break

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)

    def __repr__(self) -> str:
        return f"FeatureMemory({str(self.location)!r}, max_bytes={self.max_bytes})"


def resolve_memory(memory) -> FeatureMemory | None:
    """``None``, a path, a ``joblib.Memory`` or a :class:`FeatureMemory` -> FeatureMemory or None.

    This is how the estimators read their ``memory=`` parameter; a ``joblib.Memory``
    keeps its location and ``bytes_limit``.

    Examples
    --------
    >>> import tempfile
    >>> import joblib
    >>> from sktransfer.cache import FeatureMemory, resolve_memory
    >>> folder = tempfile.mkdtemp()
    >>> resolve_memory(None) is None
    True
    >>> isinstance(resolve_memory(folder), FeatureMemory)
    True
    >>> resolve_memory(joblib.Memory(folder, verbose=0)).location == folder
    True
    """
    if memory is None or isinstance(memory, FeatureMemory):
        return memory
    if isinstance(memory, (str, os.PathLike)):
        return FeatureMemory(memory)
    location = getattr(memory, "location", None)
    if hasattr(memory, "cache") and hasattr(memory, "location"):  # joblib.Memory
        if location is None:
            return None
        limit = getattr(memory, "bytes_limit", None)
        return FeatureMemory(location, limit if isinstance(limit, int) else DEFAULT_MAX_BYTES)
    raise TypeError(
        f"memory must be None, a folder path, a joblib.Memory or a FeatureMemory; got "
        f"{type(memory).__name__}."
    )


def module_fingerprint(module: nn.Module, **extra) -> str:
    """A key for ``module``'s structure, weights and buffers, plus ``extra`` settings.

    Two modules get the same key exactly when their ``repr``, their state dicts
    (names, dtypes and bytes) and ``extra`` are equal.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sktransfer.cache import module_fingerprint
    >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = b.weight.copy_(a.weight), b.bias.copy_(a.bias)
    >>> module_fingerprint(a) == module_fingerprint(b)
    True
    >>> module_fingerprint(a) == module_fingerprint(a, precision="bf16")
    False
    """
    return module_fingerprints({0: module}, **extra)[0]


def module_fingerprints(modules: dict, **extra) -> dict:
    """:func:`module_fingerprint` of each module of ``modules`` (a dict), each with
    ``extra``: the same keys, but a tensor that several modules share (the stages
    of nested frozen prefixes) is read and hashed once.

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer.cache import module_fingerprint, module_fingerprints
    >>> body = nn.Linear(2, 2)
    >>> keys = module_fingerprints({1: body, 2: nn.Sequential(body, nn.ReLU())}, precision="fp32")
    >>> keys[1] == module_fingerprint(body, precision="fp32")
    True
    """
    digests: dict[int, bytes] = {}  # id(tensor) -> digest, valid for this call only

    def digest(tensor: torch.Tensor) -> bytes:
        if id(tensor) not in digests:
            t = tensor.detach().cpu().contiguous().reshape(-1)
            digests[id(tensor)] = hashlib.blake2b(
                t.view(torch.uint8).numpy(), digest_size=16
            ).digest()
        return digests[id(tensor)]

    settings = json.dumps(extra, sort_keys=True, default=str).encode()
    keys = {}
    for name, module in modules.items():
        h = hashlib.blake2b(digest_size=16)
        h.update(f"v{FORMAT_VERSION}".encode())
        h.update(repr(module).encode())
        h.update(settings)
        # keep_vars: the parameters themselves, so that a shared one is recognised
        for entry, tensor in module.state_dict(keep_vars=True).items():
            h.update(entry.encode())
            h.update(str(tensor.dtype).encode())
            h.update(digest(tensor))
        keys[name] = h.hexdigest()
    return keys


def _item_fingerprint(source, i: int, paths=None) -> bytes:
    """``source.fingerprint(i)``; for a file (``paths``: ``source.file_paths()``), read
    and hashed once per process while its stat identity holds (see ``_FILE_KEYS``)."""
    if paths is None:
        return source.fingerprint(i)
    st = os.stat(paths[i])
    ident = (paths[i], st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    key = _FILE_KEYS.get(ident)
    if key is None:
        key = source.fingerprint(i)
        if time.time() - max(st.st_mtime, st.st_ctime) > _RACY_SECONDS:
            if len(_FILE_KEYS) >= _FILE_KEYS_MAX:
                _FILE_KEYS.clear()
            _FILE_KEYS[ident] = key
    return key


def _lookup(memory: FeatureMemory, model_key: str, source):
    """Content keys of ``source``'s items (None when unreadable), their entries under
    ``model_key`` (None when absent) and the indices to compute; counts hits and misses."""
    keys: list[str | None] = []
    paths = getattr(source, "file_paths", lambda: None)()
    for i in range(len(source)):
        try:
            keys.append(_item_fingerprint(source, i, paths).hex())
        except OSError:
            keys.append(None)  # unreadable: computed, so on_error decides what happens
    found = memory.get(model_key, [k or "" for k in keys])
    missing = [i for i, (k, a) in enumerate(zip(keys, found)) if k is None or a is None]
    _STATS["hits"] += len(source) - len(missing)
    _STATS["misses"] += len(missing)
    return keys, found, missing


def cached_inference(
    module, dataset, *, memory: FeatureMemory | None, model_key: str | None, **run_kwargs
):
    """``run_inference`` that serves items from ``memory`` and computes only the misses.

    Items are keyed by content (``dataset.source.fingerprint``); computed rows
    that are finite are stored under ``model_key``. ``run_kwargs`` go to
    :func:`sktransfer._runtime.run_inference` (``batch_size``, ``device``, ``dtype``,
    ``num_workers``...).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import torch
    >>> from torch import nn
    >>> from sktransfer.backbones import DataConfig
    >>> from sktransfer.cache import FeatureMemory, cached_inference, stats
    >>> from sktransfer.io import ImageTransform, as_image_source, make_dataset
    >>> images = np.random.default_rng(0).random((4, 8, 8))
    >>> dataset = make_dataset(as_image_source(images), ImageTransform(DataConfig(input_size=8)))
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    >>> memory = FeatureMemory(tempfile.mkdtemp())
    >>> run = dict(batch_size=2, device=torch.device("cpu"), dtype=None, num_workers=0)
    >>> _ = stats(reset=True)
    >>> first = cached_inference(net, dataset, memory=memory, model_key="net", **run)
    >>> again = cached_inference(net, dataset, memory=memory, model_key="net", **run)
    >>> first.shape, np.array_equal(first, again), stats()
    ((4, 2), True, {'hits': 4, 'misses': 4})
    """
    from ._runtime import run_inference

    if memory is None:
        return run_inference(module, dataset, **run_kwargs)
    source = dataset.source
    keys, found, missing = _lookup(memory, model_key, source)
    computed = None
    if missing:
        sub = type(dataset)(source.subset(np.asarray(missing)), dataset.transform)
        computed = run_inference(module, sub, **run_kwargs)
        finite = [
            r for r in range(len(missing)) if keys[missing[r]] and np.isfinite(computed[r]).all()
        ]
        memory.put(model_key, [keys[missing[r]] for r in finite], [computed[r] for r in finite])
    shape = (computed[0] if computed is not None else found[0]).shape
    out = np.empty((len(source), *shape), dtype=np.float32)
    for i, a in enumerate(found):
        if a is not None and keys[i] is not None:
            out[i] = a
    if computed is not None:
        out[np.asarray(missing)] = computed
    return out


def cached_prefix_inference(
    backbone, cut: int, dataset, *, memory: FeatureMemory, keys: dict, pool=None, **run_kwargs
):
    """Activations after the first ``cut`` stages of ``backbone`` for every item of
    ``dataset``, served from ``memory`` where they are there.

    ``keys`` maps ``cut``, and optionally shallower cuts, to model keys (see
    :func:`module_fingerprint`). An item missing at ``cut`` is computed from the
    deepest shallower cut cached for it, else from its input; the activations at
    every cut in ``keys`` that this passes are stored as well. A search over
    freeze depth therefore runs the frozen bottom of the network once per item:
    the fit that freezes most stores the cuts the next depths need.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import torch
    >>> from torch import nn
    >>> from sktransfer.backbones import Backbone, DataConfig, build_stage_module
    >>> from sktransfer.cache import FeatureMemory, cached_prefix_inference, module_fingerprint
    >>> from sktransfer.io import ImageTransform, as_image_source, make_dataset
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> config = DataConfig(input_size=8, resize_size=None)
    >>> bb = Backbone([("a", nn.Conv2d(3, 4, 3)), ("b", nn.ReLU()), ("c", nn.Conv2d(4, 2, 3))], config, name="tiny")
    >>> data = make_dataset(as_image_source(np.random.default_rng(0).random((5, 8, 8))), ImageTransform(config))
    >>> keys = {c: module_fingerprint(build_stage_module(bb, c)) for c in (1, 2, 3)}
    >>> memory = FeatureMemory(tempfile.mkdtemp())
    >>> run = dict(batch_size=2, device=torch.device("cpu"), dtype=None, num_workers=0)
    >>> cut3 = cached_prefix_inference(bb, 3, data, memory=memory, keys=keys, **run)
    >>> cut1 = memory.get(keys[1], [data.source.fingerprint(i).hex() for i in range(5)])  # stored on the way
    >>> cut3.shape, cut1[0].shape, bool(np.allclose(cut3, bb.eval()(torch.stack([data[i][0] for i in range(5)])).detach(), rtol=1e-4, atol=1e-4))
    ((5, 2, 4, 4), (4, 6, 6), True)
    """
    from ._runtime import TensorItems, run_inference

    source = dataset.source
    item_keys, found, missing = _lookup(memory, keys[cut], source)
    rows: dict[int, np.ndarray] = {
        i: a for i, a in enumerate(found) if a is not None and item_keys[i]
    }

    def compute(module, data, items, **kwargs):
        flat = run_inference(module, data, **{**run_kwargs, **kwargs})
        for c, part in zip(module.outputs, module.split_outputs(flat)):
            ok = [r for r, i in enumerate(items) if item_keys[i] and np.isfinite(part[r]).all()]
            memory.put(keys[c], [item_keys[items[r]] for r in ok], [part[r] for r in ok])
            if c == cut:
                rows.update({i: part[r] for r, i in enumerate(items)})

    for j in sorted((c for c in keys if c < cut), reverse=True):
        todo = [i for i in missing if i not in rows and item_keys[i]]
        if not todo:
            break
        got = memory.get(keys[j], [item_keys[i] for i in todo])
        have = [i for i, a in zip(todo, got) if a is not None]
        if have:
            acts = torch.from_numpy(np.stack([a for a in got if a is not None]))
            cuts = [c for c in keys if j < c <= cut]
            compute(StagedNet(backbone, j, outputs=cuts, pooling=pool), TensorItems(acts), have, num_workers=0)
    todo = [i for i in missing if i not in rows]
    if todo:
        sub = type(dataset)(source.subset(np.asarray(todo)), dataset.transform)
        compute(StagedNet(backbone, outputs=[c for c in keys if c <= cut], pooling=pool), sub, todo)
    shape = rows[0].shape if 0 in rows else next(iter(rows.values())).shape
    out = np.empty((len(source), *shape), dtype=np.float32)
    for i, a in rows.items():
        out[i] = a
    return out
