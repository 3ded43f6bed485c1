"""``unfreeze="auto"``: the freeze depth chosen on a hold-out, then a refit on all data.

The fine-tuning estimators' default. How many top stages of the backbone should train
depends on the data: photos close to ImageNet do best with only the top stage training
(a deeper fine-tune over-fits a few hundred photos), data far from it (digits,
drawings, scans) gains from training deeper. ``benchmarks/recipe_candidates.py``
measured both, so the default measures it too, the way scikit-learn's ``*CV``
estimators choose a regularisation strength:

1. each candidate depth in :data:`AUTO_DEPTHS` trains on the training part of
   ``validation_split`` (early stopping on the hold-out, as a fixed depth does), and
   its best validation loss is its score;
2. the depth with the lowest loss (the shallower on a tie) is refitted on all the
   data, without a hold-out, for ``max_epochs`` (explicit validation data,
   ``validation_split=(X_val, y_val)``, is not part of ``X`` and stays the refit's
   validation data).

With ``checkpoint_dir``, only the refit is checkpointed (keyed by its own parameters:
the chosen depth, no hold-out): a killed fit reruns the trials on the cached
activations, which with the same ``random_state`` choose the same depth, and resumes
the refit.

The trials and the refit share one activation cache (the estimator's ``memory``, or a
temporary one for the duration of the fit), so the frozen bottom of the network runs
once per image for all of them, and the trials only train the top stages. Where frozen
activations cannot be cached (text backbones, whose token states are not cached,
training-time ``augment``, ``cache_frozen=False``), every trial would run the whole
network every epoch; there, and without a hold-out to choose on
(``validation_split=None``), ``"auto"`` trains :data:`FALLBACK_DEPTH` stages without a
search (``unfreeze_scores_`` is then empty).
"""

from __future__ import annotations

import contextlib
import tempfile

from sklearn.base import clone

from ._modality import get_modality
from ._validation import is_fitted_name

__all__ = ["AUTO_DEPTHS", "FALLBACK_DEPTH", "fit_auto_depth"]

#: The freeze depths ``unfreeze="auto"`` compares (those the backbone has).
AUTO_DEPTHS = (1, 2)
#: The depth ``"auto"`` trains where the trials could not run on cached activations.
FALLBACK_DEPTH = 1


def _searchable(estimator, backbone) -> bool:
    """Whether there is a hold-out to choose on and the trials can run on cached frozen
    activations."""
    no_augment = estimator.augment in (None, "none", False)
    return bool(
        estimator.validation_split is not None
        and estimator.cache_frozen
        and no_augment
        and get_modality(backbone).caches_unpooled
    )


def fit_auto_depth(estimator, X, y, classes=None) -> None:
    """Fit ``estimator`` (unfitted, ``unfreeze="auto"``) in place: trials, choice, refit.

    On success ``estimator`` holds the refitted model's fitted attributes, plus
    ``unfreeze_`` (the depth chosen) and ``unfreeze_scores_`` (``{depth: best
    validation loss}`` of the trials; empty when there was no search).
    """
    seed = estimator._seed()  # one seed for the trials and the refit
    backbone = estimator._load_backbone()
    n_stages = len(backbone.stage_names)
    depths = [d for d in AUTO_DEPTHS if d <= n_stages] or [n_stages]
    search = len(depths) > 1 and _searchable(estimator, backbone)
    scores: dict[int, float] = {}
    with contextlib.ExitStack() as stack:
        memory = estimator.memory
        if memory is None and search:
            memory = stack.enter_context(tempfile.TemporaryDirectory(prefix="sktransfer-auto-"))
        if search:
            for depth in depths:
                trial = _variant(estimator, unfreeze=depth, random_state=seed, memory=memory)
                trial.set_params(checkpoint_dir=None, verbose=0)
                trial._fit(X, y, continue_training=False, classes=classes)
                losses = [e["valid_loss"] for e in trial.net_.history if "valid_loss" in e]
                scores[depth] = float(min(losses))
            best = min(scores, key=lambda d: (scores[d], d))
            if estimator.verbose:
                listed = ", ".join(f"unfreeze={d}: {s:.4f}" for d, s in scores.items())
                print(f"unfreeze='auto': validation loss {listed}; refitting unfreeze={best}")
        else:
            best = min(FALLBACK_DEPTH, n_stages)
        # a hold-out fraction goes back into training; given (X_val, y_val) stays the
        # validation data (early stopping, history), as for a fixed depth
        given = isinstance(estimator.validation_split, tuple)
        final = _variant(
            estimator,
            unfreeze=best,
            # random_state=None: the refit draws its own seed, and a checkpoint of a killed
            # refit resumes with the seed it drew (FitCheckpoint), as for a fixed depth
            random_state=None if estimator.random_state is None else seed,
            memory=memory,
            validation_split=estimator.validation_split if given else None,
        )
        final._fit(X, y, continue_training=False, classes=classes)
    fitted = {k: v for k, v in vars(final).items() if is_fitted_name(k)}
    if estimator.memory is None:  # the temporary cache is gone: predict runs the network
        fitted["prefix_keys_"] = None
    vars(estimator).update(fitted)
    estimator.unfreeze_ = best
    estimator.unfreeze_scores_ = scores


def _variant(estimator, **params):
    """An unfitted copy of ``estimator`` with ``params`` changed."""
    return clone(estimator).set_params(**params)
