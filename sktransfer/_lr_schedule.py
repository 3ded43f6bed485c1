"""The learning-rate schedule of the fine-tuning estimators: a skorch
:class:`~skorch.callbacks.LRScheduler` stepping a :class:`~torch.optim.lr_scheduler.LambdaLR`
once per batch, restarted when two-phase training rebuilds the optimizer.

Training has one or two phases: with ``warmup_epochs`` (and a backbone to
unfreeze) the head trains alone at its constant learning rate for those epochs,
then the schedule spans the remaining epochs; otherwise the schedule spans all
``max_epochs``. Every parameter group (head, backbone stages with their
discriminative rates) is scaled by the same factor, so the ratios between them
hold throughout.

- ``"constant"``: factor 1.
- ``"cosine"``: from 1 down to 0 along a half cosine (the last batch trains at a
  small positive rate).
- ``"onecycle"``: up from ``1 / 25`` to 1 along a half cosine over the first 25%
  of the phase's batches, then down to 0 along a half cosine (the shape of
  :class:`torch.optim.lr_scheduler.OneCycleLR` and fastai's ``fit_one_cycle``).
"""

from __future__ import annotations

import math

from skorch.callbacks import LRScheduler
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["LR_SCHEDULES", "PhasedLRScheduler", "ScheduleFactor"]

LR_SCHEDULES = ("constant", "cosine", "onecycle")
_ONECYCLE_PCT_START = 0.25
_ONECYCLE_DIV = 25.0


class ScheduleFactor:
    """Multiplier of the base learning rates at step ``k`` of a phase of ``n_steps``.

    A callable object (not a closure) so that ``LambdaLR.state_dict()`` keeps it.

    Examples
    --------
    >>> from sktransfer._lr_schedule import ScheduleFactor
    >>> f = ScheduleFactor("cosine", 4)
    >>> [round(f(k), 3) for k in range(4)]
    [1.0, 0.854, 0.5, 0.146]
    >>> g = ScheduleFactor("onecycle", 8)
    >>> [round(g(k), 3) for k in range(8)]
    [0.04, 0.52, 1.0, 0.933, 0.75, 0.5, 0.25, 0.067]
    """

    def __init__(self, schedule: str = "constant", n_steps: int = 1, start: int = 0):
        self.schedule = schedule
        self.n_steps = max(1, int(n_steps))
        self.start = start  # first epoch of the phase

    def __call__(self, k: int) -> float:
        n = self.n_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(k, n) / n))
        # onecycle
        up = max(1, round(_ONECYCLE_PCT_START * n))
        if k <= up:
            lo = 1.0 / _ONECYCLE_DIV
            return lo + (1.0 - lo) * 0.5 * (1.0 - math.cos(math.pi * k / up))
        down = max(1, n - up)
        return 0.5 * (1.0 + math.cos(math.pi * min(k - up, down) / down))


class PhasedLRScheduler(LRScheduler):
    """Per-batch learning-rate schedule over the training phase after warm-up.

    Parameters
    ----------
    schedule : {"constant", "cosine", "onecycle"}
    warmup_epochs : int
        Epochs of the head-only phase (constant learning rate); 0 for one phase.
    max_epochs : int
        All epochs, warm-up included.

    Its ``lr_scheduler_`` is a ``LambdaLR`` on the net's current optimizer;
    when two-phase training rebuilds the optimizer at the end of warm-up, a new
    one starts the schedule there. The head's rate of every batch goes to the
    history as ``event_lr`` (``net.history[:, "batches", :, "event_lr"]``).
    """

    def __init__(self, schedule="cosine", warmup_epochs=0, max_epochs=10, event_name="event_lr"):
        super().__init__(policy=LambdaLR, event_name=event_name, step_every="batch")
        self.schedule = schedule
        self.warmup_epochs = warmup_epochs
        self.max_epochs = max_epochs

    @property
    def kwargs(self):
        return {}  # the scheduler's arguments are built in _get_scheduler

    def _steps_per_epoch(self, net, X) -> int:
        params = net.get_params_for("iterator_train")
        batch_size = params.get("batch_size", net.batch_size)
        n = len(X) if X is not None else 0
        if batch_size in (None, -1) or n == 0:
            return 1
        full, rest = divmod(n, int(batch_size))
        return max(1, full if params.get("drop_last") else full + bool(rest))

    def _phase(self, epoch: int) -> tuple[int, int, str]:
        """``(first_epoch, n_epochs, schedule)`` of the phase holding ``epoch`` (0-based).

        Epochs past ``max_epochs`` (``partial_fit``) start a new cycle every
        ``max_epochs`` epochs.
        """
        w, total = int(self.warmup_epochs), int(self.max_epochs)
        if w and epoch < w:
            return 0, w, "constant"
        if epoch < total:
            return w, total - w, self.schedule
        return total + (epoch - total) // total * total, total, self.schedule

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.steps_per_epoch_ = self._steps_per_epoch(net, X)
        self.epoch_ = len(net.history)  # the next epoch to train
        super().on_train_begin(net, X=X, y=y, **kwargs)

    def on_epoch_begin(self, net, **kwargs):
        # skorch has added this epoch's row; WarmupUnfreeze (an earlier callback)
        # may have rebuilt the optimizer
        self.epoch_ = len(net.history) - 1
        start = self._phase(self.epoch_)[0]
        current = self.lr_scheduler_
        if current.optimizer is not net.optimizer_ or current.lr_lambdas[0].start != start:
            self.lr_scheduler_ = self._get_scheduler(net, self.policy_)

    def _get_scheduler(self, net, policy, **scheduler_kwargs):
        start, n_epochs, schedule = self._phase(self.epoch_)
        factor = ScheduleFactor(schedule, max(1, n_epochs) * self.steps_per_epoch_, start)
        before = 0
        if start > 0 and net.history:
            before = sum(int(row.get("train_batch_count", 0)) for row in net.history[:start])
        done = max(0, self.batch_idx_ - before)
        for group in net.optimizer_.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return LambdaLR(net.optimizer_, factor, last_epoch=done - 1)
