"""skorch callbacks of the fine-tuning estimators: two-phase training (head first,
then unfreeze), a stop on non-finite losses, and the per-epoch checkpoint."""

from __future__ import annotations

import torch
from skorch.callbacks import Callback

from ._checkpoint import save_checkpoint
from .exceptions import TrainingDivergedError

__all__ = ["EpochCheckpoint", "StopOnNonFinite", "WarmupUnfreeze"]


class WarmupUnfreeze(Callback):
    """Train only the head for ``epochs`` epochs, then unfreeze the backbone's
    top stages and rebuild the optimizer (two-phase training)."""

    def __init__(self, epochs=0, n_frozen=0):
        self.epochs = epochs
        self.n_frozen = n_frozen

    def on_train_begin(self, net, **kwargs):
        if len(net.history) < self.epochs:
            net.module_.freeze(len(net.module_.backbone.stages))
            net.initialize_optimizer()

    def on_epoch_begin(self, net, **kwargs):
        # skorch has already added this epoch's row to the history
        if len(net.history) == self.epochs + 1 and net.module_.n_frozen != self.n_frozen:
            net.module_.freeze(self.n_frozen)
            net.initialize_optimizer()


class EpochCheckpoint(Callback):
    """Save module, optimizer and history after each epoch, atomically (temp file + rename)."""

    def __init__(self, path=None, classes=None):
        self.path = path
        self.classes = classes

    def on_epoch_end(self, net, **kwargs):
        save_checkpoint(net, self.path, self.classes, finished=False)

    def on_train_end(self, net, **kwargs):
        if len(net.history):
            save_checkpoint(net, self.path, self.classes, finished=True)


class StopOnNonFinite(Callback):
    """A NaN or infinite loss stops training with a clear error."""

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if loss is not None and not torch.isfinite(loss.detach()).all():
            epoch = len(net.history)
            raise TrainingDivergedError(
                f"The {'training' if training else 'validation'} loss became {loss.item()} in "
                f"epoch {epoch}. Lower lr (now {net.lr}), check the inputs for extreme values, "
                "or use precision='fp32'."
            )
