"""The fine-tuning checkpoint: what is saved after each epoch and how a fit resumes."""

from __future__ import annotations

import json

import torch
from skorch.history import History

from ._files import atomic_write
from .exceptions import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "resume", "save_checkpoint"]

CHECKPOINT_FORMAT = "sktransfer-finetune-checkpoint-v1"


def save_checkpoint(net, path, classes, finished: bool) -> None:
    """Write ``net``'s module, optimizer and history to ``path`` atomically."""
    history = json.loads(json.dumps(list(net.history), default=float))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "classes": list(classes),
        "finished": finished,
        "module": {k: v.detach().cpu() for k, v in net.module_.state_dict().items()},
        "optimizer": net.optimizer_.state_dict(),
        "history": history,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def resume(net, path, classes, warmup_epochs) -> int | None:
    """Load the checkpoint at ``path`` into ``net``; return the epochs left (None: no checkpoint)."""
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location=net.device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
        raise CheckpointError(
            f"Could not read the fine-tuning checkpoint {path} ({type(exc).__name__}: {exc}). "
            "Delete it to start over, or use another checkpoint_dir."
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a sktransfer fine-tuning checkpoint.")
    if list(ckpt["classes"]) != list(classes.tolist()):
        raise CheckpointError(
            f"The checkpoint in {path} is for classes {ckpt['classes'][:10]}, but y has "
            f"{classes.tolist()[:10]}. Use another checkpoint_dir or delete the file."
        )
    try:
        net.module_.load_state_dict(ckpt["module"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"The checkpoint in {path} is for another architecture or head: {exc}"
        ) from exc
    net.history = History(ckpt["history"])
    done = len(net.history)
    if done < warmup_epochs:  # resume inside the head-only phase: freeze as it was
        net.module_.freeze(len(net.module_.backbone.stages))
        net.initialize_optimizer()
    try:
        net.optimizer_.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError):
        pass  # the phase changed at this epoch: the new optimizer starts fresh
    return 0 if ckpt.get("finished") else max(0, net.max_epochs - done)
