"""skorch callbacks of the fine-tuning estimators: two-phase training (head first,
then unfreeze), a stop on non-finite losses, and the per-epoch checkpoint."""

from __future__ import annotations

import torch
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ._checkpoint import restore_callback_states, save_checkpoint
from ._lr_schedule import PhasedLRScheduler
from .exceptions import TrainingDivergedError

__all__ = ["EpochCheckpoint", "StopOnNonFinite", "WarmupUnfreeze"]


class WarmupUnfreeze(Callback):
    """Train only the head for ``epochs`` epochs, then unfreeze the backbone's
    top stages and rebuild the optimizer (two-phase training).

    The optimizer is rebuilt only when the phase changes, so a resumed fit keeps the
    optimizer state its checkpoint restored. At the unfreeze, each skorch
    ``LRScheduler`` gets a new scheduler on the new optimizer: its schedule starts
    again for the second phase (one schedule per phase, as fastai's ``fine_tune``),
    instead of stepping the discarded optimizer.
    """

    def __init__(self, epochs=0, n_frozen=0):
        self.epochs = epochs
        self.n_frozen = n_frozen

    def on_train_begin(self, net, **kwargs):
        n_stages = len(net.module_.backbone.stages)
        if len(net.history) < self.epochs and net.module_.n_frozen != n_stages:
            net.module_.freeze(n_stages)
            net.initialize_optimizer()

    def on_epoch_begin(self, net, **kwargs):
        # skorch has already added this epoch's row to the history
        if len(net.history) == self.epochs + 1 and net.module_.n_frozen != self.n_frozen:
            net.module_.freeze(self.n_frozen)
            net.initialize_optimizer()
            for _, cb in net.callbacks_:
                if isinstance(cb, PhasedLRScheduler):
                    continue  # lr_schedule=: starts its second phase itself
                if isinstance(cb, LRScheduler) and getattr(cb, "lr_scheduler_", None) is not None:
                    kwargs = dict(cb.kwargs)
                    if cb.policy_ is not ReduceLROnPlateau:
                        kwargs["last_epoch"] = -1  # a new schedule, from the new base rates
                    cb.lr_scheduler_ = cb.policy_(net.optimizer_, **kwargs)


class EpochCheckpoint(Callback):
    """Save the full training state after each epoch, atomically (temp file + rename);
    restore it at the start of a resumed training (see :mod:`sktransfer._checkpoint`).

    Place it after every other callback: it saves what their ``on_epoch_end`` left (the
    scheduler's step, early stopping's counters) and restores what their
    ``on_train_begin`` reset. :class:`~sktransfer._checkpoint.FitCheckpoint` sets
    ``path`` and the fit's identity; with ``path=None`` nothing is saved.
    """

    def __init__(self, path=None, classes=None):
        self.path = path
        self.classes = classes

    def initialize(self):
        self.identity = None
        self.seed = None
        self.pending = None  # a checkpoint to restore at on_train_begin
        return self

    def on_train_begin(self, net, **kwargs):
        if self.pending is not None:
            restore_callback_states(net, self.pending)
            self.pending = None

    def on_epoch_end(self, net, **kwargs):
        if self.path is not None:
            self._save(net, finished=False)

    def on_train_end(self, net, **kwargs):
        # skorch ends training on a KeyboardInterrupt too (early stopping raises one):
        # the run is finished only at max_epochs or when early stopping stopped it; after
        # a Ctrl-C the last epoch's checkpoint stays, and the next fit resumes from it
        if self.path is None or not len(net.history):
            return
        stopped = any(
            isinstance(cb, EarlyStopping) and getattr(cb, "misses_", 0) >= cb.patience
            for _, cb in net.callbacks_
        )
        if stopped or len(net.history) >= net.max_epochs:
            self._save(net, finished=True)

    def _save(self, net, finished):
        save_checkpoint(
            net,
            self.path,
            identity=self.identity,
            seed=self.seed,
            classes=self.classes,
            finished=finished,
        )


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
