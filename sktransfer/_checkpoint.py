"""The fine-tuning checkpoint: which fit a checkpoint belongs to, what is saved after
each epoch, and how a fit resumes exactly where it stopped.

A checkpoint is keyed by the fit's *identity* (:func:`fit_identity`): a hash of the
estimator's parameters that affect training, the training (and given validation)
data's content and labels, and the seed. Its file is
``sktransfer-finetune-<first 16 hex digits of the identity>.pt``, and the full
identity is stored inside and checked on load, so a fit only ever resumes its own
checkpoint: the folds of ``cross_val_score`` and the candidates of ``GridSearchCV``
sharing one ``checkpoint_dir`` never load each other's weights.

After each epoch (after every other callback, so after the LR scheduler's step and
early stopping's bookkeeping) the file holds everything the next epoch depends on:

- the module's weights and the number of frozen stages (the warm-up phase),
- the optimizer's state (moments, step counts, learning rates),
- the history,
- the torch random number generator (CPU, and the CUDA device's when training on
  CUDA): skorch's shuffling, dropout and the augmentations draw from it (DataLoader
  workers are seeded from it at each epoch),
- the state of the training callbacks: each skorch ``LRScheduler``'s scheduler
  (``lr_scheduler_.state_dict()`` and its batch counter) and each ``EarlyStopping``'s
  patience counter, threshold, best epoch and best weights, and each scoring
  callback's best score (the ``*_best`` flags of the history). Other callbacks' state
  is not saved,
- with ``precision="fp16"``, the gradient scaler's loss scale and growth counter.

Resuming restores the weights, phase and optimizer before training starts and the
rest after every callback's ``on_train_begin`` (which resets them), so a run killed
after epoch ``k`` and run again ends as the run that was never killed (on the same
device, with the same library versions). skorch's ``Checkpoint``/``LoadInitState`` save
only the module, optimizer and history, in several files written one after the
other, so this one atomic file is used instead.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from skorch.callbacks import EarlyStopping, LRScheduler
from skorch.history import History
from torch import nn

from ._files import atomic_write
from .exceptions import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "FitCheckpoint",
    "attach_checkpoint",
    "checkpoint_file",
    "fit_identity",
    "restore_callback_states",
    "save_checkpoint",
]

# v3: the optimizer no longer holds the backbone's pretrained classifier
CHECKPOINT_FORMAT = "sktransfer-finetune-checkpoint-v3"

# Parameters that do not change what a fit computes: they are left out of its identity.
_NOT_IN_IDENTITY = frozenset(
    {"verbose", "num_workers", "checkpoint_dir", "memory", "tta"}
)  # not training

_NDARRAY = "__numpy_array__"

_EARLY_STOPPING_STATE = ("misses_", "dynamic_threshold_", "best_epoch_", "best_model_weights_")


# --------------------------------------------------------------------------- identity


def _describe(value, depth: int = 0):
    """A JSON-able description of a parameter value that is equal across processes exactly
    when the values would train the same way (weights of modules, bytes of arrays)."""
    if depth > 8:
        return f"<{type(value).__qualname__}>"
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, str) and os.path.isfile(value):
            return _describe(Path(value), depth)
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, os.PathLike):
        path = Path(value)
        stat = path.stat() if path.is_file() else None
        return {"path": str(path), "file": [stat.st_size, stat.st_mtime_ns] if stat else None}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {"array": [list(value.shape), _describe(value.ravel().tolist(), depth + 1)]}
        a = np.ascontiguousarray(value)
        return {"array": [str(a.dtype), list(a.shape), _digest(a.tobytes())]}
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        data = t.view(torch.uint8).numpy().tobytes()
        return {"tensor": [str(t.dtype), list(value.shape), _digest(data)]}
    if isinstance(value, nn.Module):
        from .cache import module_fingerprint  # cache imports the backbones: import when used

        return {"module": module_fingerprint(value)}
    if isinstance(value, Mapping):
        return {"dict": sorted([str(k), _describe(v, depth + 1)] for k, v in value.items())}
    if isinstance(value, (list, tuple)):
        return [_describe(v, depth + 1) for v in value]
    if isinstance(value, functools.partial):
        return {"partial": _describe([value.func, value.args, value.keywords], depth + 1)}
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return {"callable": f"{getattr(value, '__module__', '')}.{value.__qualname__}"}
    if dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {type(value).__qualname__: _describe(fields, depth + 1)}
    if hasattr(value, "__dict__"):
        # an object such as a skorch callback: its class and its settings, not its
        # fitted state (names ending in "_") or private attributes
        settings = {
            k: v for k, v in vars(value).items() if not k.startswith("_") and not k.endswith("_")
        }
        return {type(value).__qualname__: _describe(settings, depth + 1)}
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def fit_identity(params: dict, source, y_enc, classes, val, seed) -> str:
    """The identity of one fit: its training parameters, data and seed, as 64 hex digits.

    ``params`` are the estimator's ``get_params(deep=False)`` (``verbose``,
    ``num_workers``, ``checkpoint_dir`` and ``memory`` are left out: they do not
    change the model); ``source`` and ``y_enc`` the training items and their encoded
    targets (class codes, or float targets), ``classes`` what the targets are;
    ``val`` the validation plan (a given validation set counts with its content); ``seed`` the seed, or None when ``random_state`` is
    None (the fit then has no reproducible seed: see :class:`FitCheckpoint`).

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer._modality import as_source
    >>> src = as_source(np.zeros((4, 8, 8, 3), dtype=np.uint8), "image")
    >>> a = fit_identity({"lr": 0.1}, src, np.array([0, 1, 0, 1]), ["a", "b"], None, 0)
    >>> len(a), a == fit_identity({"lr": 0.1}, src, np.array([0, 1, 0, 1]), ["a", "b"], None, 0)
    (64, True)
    >>> a == fit_identity({"lr": 0.2}, src, np.array([0, 1, 0, 1]), ["a", "b"], None, 0)
    False
    >>> a == fit_identity({"lr": 0.1}, src, np.array([0, 1, 1, 0]), ["a", "b"], None, 0)
    False
    >>> a == fit_identity({"lr": 0.1}, src.subset([0, 1]), np.array([0, 1]), ["a", "b"], None, 0)
    False
    """
    h = hashlib.blake2b(digest_size=32)
    kept = {k: v for k, v in params.items() if k not in _NOT_IN_IDENTITY}
    kept.pop("validation_split", None)  # described with its content below
    h.update(CHECKPOINT_FORMAT.encode())
    h.update(json.dumps(_describe(kept), sort_keys=True, default=str).encode())
    h.update(json.dumps({"seed": seed, "classes": [str(c) for c in classes]}).encode())

    def data(src, y):
        h.update(f"{type(src).__name__}:{len(src)}".encode())
        for i in range(len(src)):
            h.update(src.fingerprint(i))
        y = np.asarray(y)
        if y.dtype.kind in "iub":  # class codes, hashed as int64 (as every version did)
            h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
        else:  # float targets (regression, label indicators), with their shape
            h.update(f"{y.shape}".encode() + np.ascontiguousarray(y, dtype=np.float64).tobytes())

    data(source, y_enc)
    if val is None:
        h.update(b"no validation")
    elif val[0] == "split":  # a fraction: the split itself follows from the seed
        h.update(f"split {float(params['validation_split'])!r}".encode())
    else:
        h.update(b"given")
        data(val[1], val[2])
    return h.hexdigest()


def checkpoint_file(folder, identity: str) -> Path:
    """The checkpoint file of the fit ``identity`` in ``folder``.

    >>> checkpoint_file("ckpt", "0123456789abcdef" * 4).name
    'sktransfer-finetune-0123456789abcdef.pt'
    """
    return Path(folder) / f"sktransfer-finetune-{identity[:16]}.pt"


# --------------------------------------------------------------------------- saving


def _rng_state(device) -> dict:
    state = {"torch": torch.get_rng_state()}
    device = torch.device(device)
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _callback_states(net) -> dict:
    """The state of the training callbacks that their ``on_train_begin`` would reset."""
    states = {}
    for name, cb in net.callbacks_:
        if isinstance(cb, LRScheduler) and getattr(cb, "lr_scheduler_", None) is not None:
            states[name] = {
                "kind": "LRScheduler",
                "scheduler": cb.lr_scheduler_.state_dict(),
                "batch_idx": int(cb.batch_idx_),
            }
        elif isinstance(cb, EarlyStopping) and hasattr(cb, "misses_"):
            weights = cb.best_model_weights_
            states[name] = {
                "kind": "EarlyStopping",
                "misses_": int(cb.misses_),
                "dynamic_threshold_": float(cb.dynamic_threshold_),
                "best_epoch_": int(cb.best_epoch_),
                "best_model_weights_": None
                if weights is None
                else {k: v.detach().cpu() for k, v in weights.items()},
            }
        elif isinstance(getattr(cb, "best_score_", None), (int, float, np.number)):
            # skorch's scoring callbacks: their "<name>_best" flags in the history
            # (PassthroughScoring, for train_loss and valid_loss, does not recover it)
            states[name] = {"kind": "Scoring", "best_score_": float(cb.best_score_)}
    return states


def _plain(obj):
    """``obj`` with numpy scalars as Python numbers and numpy arrays tagged as lists
    (``torch.load(weights_only=True)`` reads tensors, containers and Python scalars only;
    skorch's ``WarmRestartLR`` keeps arrays in its state); :func:`_unplain` reverts it."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return {_NDARRAY: obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    return obj


def _unplain(obj):
    if isinstance(obj, dict):
        if _NDARRAY in obj:
            return np.asarray(obj[_NDARRAY], dtype=obj["dtype"])
        return {k: _unplain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unplain(v) for v in obj)
    return obj


def save_checkpoint(net, path, *, identity, seed, classes, finished: bool) -> None:
    """Write ``net``'s full training state (see the module docstring) to ``path`` atomically."""
    history = json.loads(json.dumps(list(net.history), default=float))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "identity": identity,
        "seed": int(seed),
        "classes": list(classes),
        "finished": finished,
        "n_frozen": int(net.module_.n_frozen),
        "module": {k: v.detach().cpu() for k, v in net.module_.state_dict().items()},
        "optimizer": _plain(net.optimizer_.state_dict()),
        "history": history,
        "rng": _rng_state(net.device),
        "callbacks": _plain(_callback_states(net)),
    }
    scaler = getattr(net, "grad_scaler_", None)
    if scaler is not None:  # fp16: the loss scale and its growth counter
        payload["grad_scaler"] = _plain(scaler.state_dict())
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


# --------------------------------------------------------------------------- resuming


def _load(path: Path, device):
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
        raise CheckpointError(
            f"Could not read the fine-tuning checkpoint {path} ({type(exc).__name__}: {exc}). "
            "Delete it to start over, or use another checkpoint_dir."
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a sktransfer fine-tuning checkpoint of this version "
            f"({CHECKPOINT_FORMAT}). Delete it to start over, or use another checkpoint_dir."
        )
    return ckpt


class FitCheckpoint:
    """The checkpoint of one fit: where it is saved and what it resumes from.

    Parameters
    ----------
    folder : str or Path
        ``checkpoint_dir``.
    identity : str
        :func:`fit_identity` of the fit.
    seed : int
        The seed of this fit. With ``random_state=None`` (``reuse_seed=True``) the
        identity has no seed, and a checkpoint found for it gives its own seed
        instead: a killed run with a random seed resumes with the seed it drew.
    reuse_seed : bool
    device : torch.device

    Attributes
    ----------
    path : Path
    saved : dict or None
        The checkpoint found for this identity (None: the fit starts fresh).
    seed : int
        The seed the fit must use.
    """

    def __init__(self, folder, identity: str, seed: int, *, reuse_seed: bool, device):
        self.identity = identity
        self.path = checkpoint_file(folder, identity)
        self.saved = None
        if self.path.exists():
            ckpt = _load(self.path, device)
            if ckpt.get("identity") == identity:  # else a 64-bit prefix clash: start fresh
                self.saved = ckpt
        self.seed = int(self.saved["seed"]) if self.saved is not None and reuse_seed else seed

    def attach(self, net, classes) -> int | None:
        """Make ``net`` save to this checkpoint after each epoch and, when there is one,
        restore the weights, warm-up phase, optimizer and history into it.

        Returns the number of epochs left to train (None: all ``max_epochs``, a fresh
        start). The random state and callback states are restored at the start of
        training by the ``EpochCheckpoint`` callback (their ``on_train_begin`` resets them).
        """
        cb = _epoch_checkpoint(net)
        cb.path, cb.identity, cb.seed, cb.classes = self.path, self.identity, self.seed, classes
        cb.pending = None
        ckpt = self.saved
        if ckpt is None:
            return None
        if list(ckpt["classes"]) != list(classes):
            raise CheckpointError(
                f"The checkpoint in {self.path} is for classes {ckpt['classes'][:10]}, but y has "
                f"{list(classes)[:10]}. Use another checkpoint_dir or delete the file."
            )
        module = net.module_
        try:
            module.load_state_dict(ckpt["module"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"The checkpoint in {self.path} is for another architecture or head: {exc}"
            ) from exc
        net.history = History(ckpt["history"])
        if module.n_frozen != ckpt["n_frozen"]:  # killed inside the warm-up (head-only) phase
            module.freeze(ckpt["n_frozen"])
            net.initialize_optimizer()
        net.optimizer_.load_state_dict(ckpt["optimizer"])
        if net.verbose:
            state = "finished" if ckpt["finished"] else "resuming"
            print(f"{self.path}: {len(net.history)} epochs done, {state}")
        if ckpt["finished"]:
            return 0
        cb.pending = ckpt
        return max(0, net.max_epochs - len(net.history))


def attach_checkpoint(net, checkpoint: FitCheckpoint | None, classes) -> int | None:
    """:meth:`FitCheckpoint.attach`; with ``checkpoint=None`` the net saves nothing."""
    if checkpoint is None:
        _epoch_checkpoint(net).path = None
        return None
    return checkpoint.attach(net, classes)


def _epoch_checkpoint(net):
    """The net's ``EpochCheckpoint`` (registered as ``"epoch_checkpoint"``; found by name,
    so that this module does not import the callbacks, which import it)."""
    cb = dict(net.callbacks_).get("epoch_checkpoint")
    if cb is None:
        raise RuntimeError("the net has no EpochCheckpoint callback")  # a bug, not a user error
    return cb


def restore_callback_states(net, ckpt) -> None:
    """Restore the optimizer, callback and random states of ``ckpt`` into ``net``.

    Runs after every callback's ``on_train_begin``: ``EarlyStopping`` resets its
    counters there and ``LRScheduler`` builds a new scheduler, whose first step
    changes the learning rates (the optimizer's are loaded again for that).
    """
    net.optimizer_.load_state_dict(ckpt["optimizer"])
    scaler = getattr(net, "grad_scaler_", None)
    if scaler is not None and "grad_scaler" in ckpt:
        scaler.load_state_dict(_unplain(ckpt["grad_scaler"]))
    callbacks = dict(net.callbacks_)
    for name, state in ckpt["callbacks"].items():
        cb = callbacks.get(name)
        if state["kind"] == "LRScheduler" and isinstance(cb, LRScheduler):
            cb.lr_scheduler_.load_state_dict(_unplain(state["scheduler"]))
            cb.batch_idx_ = state["batch_idx"]
        elif state["kind"] == "Scoring" and hasattr(cb, "best_score_"):
            cb.best_score_ = state["best_score_"]
        elif state["kind"] == "EarlyStopping" and isinstance(cb, EarlyStopping):
            for attr in _EARLY_STOPPING_STATE:
                setattr(cb, attr, state[attr])
            if cb.best_model_weights_ is not None:
                device = torch.device(net.device)
                cb.best_model_weights_ = {
                    k: v.to(device) for k, v in cb.best_model_weights_.items()
                }
    torch.set_rng_state(ckpt["rng"]["torch"].cpu())
    device = torch.device(net.device)
    if "cuda" in ckpt["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
