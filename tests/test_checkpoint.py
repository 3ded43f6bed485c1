"""FineTuneClassifier checkpoints: keyed by the fit (no leakage across folds or
candidates), and a killed run resumes to exactly the run that was never killed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tolerances import FP32_TOLERANCE
from sklearn.model_selection import GridSearchCV, cross_validate
from skorch.callbacks import Callback, LRScheduler
from test_finetune import _clf, _images

from sktransfer.exceptions import CheckpointError


@pytest.fixture(scope="module", autouse=True)
def _shared_memory(tmp_path_factory):
    """Every fit here keeps its frozen activations in one folder (``memory=`` is not part of
    a fit's identity and gives the same model), so the frozen bottom of the network runs
    once per image for the whole module."""
    _MEMORY["location"] = str(tmp_path_factory.mktemp("memory"))
    yield
    _MEMORY["location"] = None


_MEMORY = {"location": None}


def _fit_clf(**kw):
    return _clf(**{"memory": _MEMORY["location"], **kw})


def _files(folder):
    return sorted(folder.glob("sktransfer-finetune*.pt"))


def _saved(folder):
    (path,) = _files(folder)
    return torch.load(path, weights_only=True)


def _history(clf):
    """The per-epoch history without the timings, batches included."""
    rows = []
    for row in clf.history_:
        row = {k: v for k, v in row.items() if k != "dur"}
        row["batches"] = [dict(b) for b in row["batches"]]
        rows.append(row)
    return rows


def _assert_same_history(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key in ra:
            if key == "batches":
                assert len(ra[key]) == len(rb[key])
                for ba, bb in zip(ra[key], rb[key]):
                    assert ba.keys() == bb.keys()
                    for k in ba:
                        np.testing.assert_allclose(ba[k], bb[k], **FP32_TOLERANCE, err_msg=k)
            elif isinstance(ra[key], float):
                np.testing.assert_allclose(ra[key], rb[key], **FP32_TOLERANCE, err_msg=key)
            else:
                assert ra[key] == rb[key], key


def _assert_same_weights(a, b):
    sa, sb = a.net_.module_.state_dict(), b.net_.module_.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], **FP32_TOLERANCE, msg=name)


# --------------------------------------------------------------------------- leakage


def test_cross_val_folds_do_not_resume_each_other(tmp_path):
    X, y = _images(32)
    params = dict(max_epochs=2, unfreeze=1, precision="fp32")
    plain = cross_validate(_fit_clf(**params), X, y, cv=2, return_estimator=True)
    ckpt = cross_validate(
        _fit_clf(**params, checkpoint_dir=str(tmp_path)), X, y, cv=2, return_estimator=True
    )
    np.testing.assert_allclose(ckpt["test_score"], plain["test_score"], **FP32_TOLERANCE)
    for with_ckpt, without in zip(ckpt["estimator"], plain["estimator"]):
        assert len(with_ckpt.history_) == 2  # every fold trained its own epochs ...
        _assert_same_history(_history(with_ckpt), _history(without))  # ... on its own fold
        _assert_same_weights(with_ckpt, without)
    assert len(_files(tmp_path)) == 2  # one checkpoint per fold

    # a rerun of the whole CV resumes each fold from its own finished checkpoint
    again = cross_validate(
        _fit_clf(**params, checkpoint_dir=str(tmp_path)), X, y, cv=2, return_estimator=True
    )
    np.testing.assert_allclose(again["test_score"], plain["test_score"], **FP32_TOLERANCE)
    assert len(_files(tmp_path)) == 2


def test_grid_search_candidates_do_not_resume_each_other(tmp_path):
    X, y = _images(32)
    grid = {"unfreeze": [0, 1]}
    params = dict(max_epochs=1, precision="fp32")
    plain = GridSearchCV(_fit_clf(**params), grid, cv=2).fit(X, y)
    ckpt = GridSearchCV(_fit_clf(**params, checkpoint_dir=str(tmp_path)), grid, cv=2).fit(X, y)
    np.testing.assert_allclose(
        ckpt.cv_results_["split0_test_score"], plain.cv_results_["split0_test_score"]
    )
    np.testing.assert_allclose(
        ckpt.cv_results_["split1_test_score"], plain.cv_results_["split1_test_score"]
    )
    assert len(_files(tmp_path)) == 2 * 2 + 1  # 2 candidates x 2 folds, and the refit


def test_another_fit_in_the_same_folder_starts_fresh(tmp_path):
    X, y = _images()
    first = _fit_clf(max_epochs=2, checkpoint_dir=str(tmp_path)).fit(X, y)
    # other labels, other data, other parameters: each a new fit, none refused or resumed
    other_labels = _fit_clf(max_epochs=2, checkpoint_dir=str(tmp_path)).fit(
        X, np.where(y == y[0], "p", "q")
    )
    assert list(other_labels.classes_) == ["p", "q"]
    other_data = _fit_clf(max_epochs=2, checkpoint_dir=str(tmp_path)).fit(X[:16], y[:16])
    other_lr = _fit_clf(max_epochs=2, lr=1e-2, checkpoint_dir=str(tmp_path)).fit(X, y)
    other_seed = _fit_clf(max_epochs=2, random_state=1, checkpoint_dir=str(tmp_path)).fit(X, y)
    assert len(_files(tmp_path)) == 5
    for clf in (other_labels, other_data, other_lr, other_seed):
        assert len(clf.history_) == 2
        assert clf.history_[0, "train_loss"] != first.history_[0, "train_loss"]
    # parameters that do not change the model share the checkpoint: this one resumes
    quiet = _fit_clf(
        max_epochs=2, verbose=1, num_workers=0, memory=None, checkpoint_dir=str(tmp_path)
    ).fit(X, y)
    assert len(_files(tmp_path)) == 5
    _assert_same_weights(quiet, first)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    X, y = _images()
    _fit_clf(max_epochs=1, checkpoint_dir=str(tmp_path)).fit(X, y)
    (path,) = _files(tmp_path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Delete it to start over"):
        _fit_clf(max_epochs=1, checkpoint_dir=str(tmp_path)).fit(X, y)


def test_partial_fit_continuation_does_not_touch_the_fit_checkpoint(tmp_path):
    X, y = _images()
    clf = _fit_clf(max_epochs=2, checkpoint_dir=str(tmp_path)).fit(X, y)
    clf.partial_fit(X[:16], y[:16])  # more training, on other data
    assert len(clf.history_) == 4
    assert len(_saved(tmp_path)["history"]) == 2 and _saved(tmp_path)["finished"]


# --------------------------------------------------------------------------- exact resume

_KILL = {"after_epoch": None}


class _Killed(Exception):
    """Stands for a killed process: raised after the checkpoint of an epoch was written."""


class _KillAfterEpoch(Callback):
    """Raises _Killed at the start of the epoch after ``_KILL["after_epoch"]``. Its settings
    are the same in the killed and the resumed run, so both are the same fit."""

    def on_epoch_begin(self, net, **kwargs):
        if _KILL["after_epoch"] is not None and len(net.history) == _KILL["after_epoch"] + 1:
            raise _Killed


def _resumable(checkpoint_dir=None, **kw):
    """Two-phase training (warm-up 2 epochs, then the top stage) with early stopping on a
    validation split, a cosine LR schedule stepped each epoch and a dropout head."""
    params = dict(
        max_epochs=5,
        unfreeze=1,
        warmup_epochs=2,
        early_stopping=2,
        validation_split=0.25,
        head_dropout=0.3,
        precision="fp32",
        lr_schedule="constant",  # the schedule is the user's LRScheduler below
        callbacks=[LRScheduler(policy="CosineAnnealingLR", T_max=3), _KillAfterEpoch()],
        checkpoint_dir=checkpoint_dir,
    )
    params.update(kw)
    return _fit_clf(**params)


def _kill_and_resume(folder, after_epoch, **kw):
    X, y = _images()
    _KILL["after_epoch"] = after_epoch
    try:
        with pytest.raises(_Killed):
            _resumable(str(folder), **kw).fit(X, y)
    finally:
        _KILL["after_epoch"] = None
    saved = _saved(folder)
    assert len(saved["history"]) == after_epoch and not saved["finished"]
    return _resumable(str(folder), **kw).fit(X, y), saved


def _assert_same_run(resumed, reference):
    _assert_same_history(_history(resumed), _history(reference))
    _assert_same_weights(resumed, reference)
    # the optimizer's learning rates and moments, the scheduler and early stopping
    for ga, gb in zip(resumed.net_.optimizer_.param_groups, reference.net_.optimizer_.param_groups):
        np.testing.assert_allclose(ga["lr"], gb["lr"], **FP32_TOLERANCE)
    cbs_a, cbs_b = dict(resumed.net_.callbacks_), dict(reference.net_.callbacks_)
    sched_a, sched_b = cbs_a["LRScheduler"].lr_scheduler_, cbs_b["LRScheduler"].lr_scheduler_
    assert sched_a.last_epoch == sched_b.last_epoch
    np.testing.assert_allclose(sched_a.get_last_lr(), sched_b.get_last_lr(), **FP32_TOLERANCE)
    es_a, es_b = cbs_a["early_stopping"], cbs_b["early_stopping"]
    assert (es_a.misses_, es_a.best_epoch_) == (es_b.misses_, es_b.best_epoch_)
    np.testing.assert_allclose(es_a.dynamic_threshold_, es_b.dynamic_threshold_, **FP32_TOLERANCE)


@pytest.fixture(scope="module")
def uninterrupted():
    X, y = _images()
    return _resumable().fit(X, y)


@pytest.mark.parametrize(
    "after_epoch",
    [
        1,  # inside the warm-up: the head-only optimizer's state survives
        2,  # the last warm-up epoch: the unfreeze (and the new schedule) comes after resuming
        3,  # after the unfreeze: the backbone's optimizer state and the schedule's position
    ],
)
def test_killed_run_resumes_to_the_uninterrupted_run(tmp_path, uninterrupted, after_epoch):
    assert uninterrupted.input_stage_ > 0  # the frozen-feature reuse (cache) path
    resumed, saved = _kill_and_resume(tmp_path, after_epoch)
    assert saved["n_frozen"] == (
        len(uninterrupted.backbone_.stages) if after_epoch <= 2 else uninterrupted.n_frozen_
    )
    _assert_same_run(resumed, uninterrupted)
    assert _saved(tmp_path)["finished"]


def test_killed_run_with_augmentation_resumes_exactly(tmp_path):
    # live images with random crops and flips: the random state drives the augmentation
    X, y = _images()
    reference = _resumable(augment="light", max_epochs=4).fit(X, y)
    assert reference.input_stage_ == 0
    resumed, _ = _kill_and_resume(tmp_path, 3, augment="light", max_epochs=4)
    _assert_same_run(resumed, reference)


def test_early_stopping_state_survives_the_kill(tmp_path):
    # patience 2: the run stops at epoch n, after one epoch without improvement at n - 1.
    # Killed after n - 1, the resumed run must know that miss, stop at n too, and restore
    # the same best epoch's weights
    X, y = _images()
    kw = dict(lr=1e-2, early_stopping=2, max_epochs=10)
    reference = _resumable(**kw).fit(X, y)
    n = len(reference.history_)
    assert 3 < n < 10, "the reference run should stop early, after the unfreeze"
    es = dict(reference.net_.callbacks_)["early_stopping"]
    assert es.best_epoch_ < n - 1  # a miss before the kill; the best weights were restored
    resumed, _ = _kill_and_resume(tmp_path, n - 1, **kw)
    _assert_same_run(resumed, reference)
    assert _saved(tmp_path)["finished"]


def test_random_state_none_resumes_with_the_seed_it_drew(tmp_path):
    resumed, saved = _kill_and_resume(tmp_path, 2, random_state=None)
    # the same fit as one seeded with the drawn seed from the start
    X, y = _images()
    reference = _resumable(random_state=saved["seed"]).fit(X, y)
    _assert_same_run(resumed, reference)


class _CtrlCAfterEpoch2(Callback):
    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == 2 and _KILL["after_epoch"] == "ctrl-c":
            raise KeyboardInterrupt  # skorch stops training and returns the net


def test_ctrl_c_leaves_the_run_resumable(tmp_path):
    X, y = _images()
    # with skorch's default schedule (WarmRestartLR keeps numpy arrays in its state)
    kw = dict(
        max_epochs=4,
        lr_schedule="constant",  # the schedule is the user's LRScheduler below
        callbacks=[LRScheduler(), _CtrlCAfterEpoch2()],
        precision="fp32",
        checkpoint_dir=str(tmp_path),
    )
    _KILL["after_epoch"] = "ctrl-c"
    try:
        stopped = _fit_clf(**kw).fit(X, y)
    finally:
        _KILL["after_epoch"] = None
    assert len(stopped.history_) == 2
    assert not _saved(tmp_path)["finished"]
    resumed = _fit_clf(**kw).fit(X, y)
    assert len(resumed.history_) == 4
    _assert_same_weights(resumed, _fit_clf(**{**kw, "checkpoint_dir": None}).fit(X, y))


def test_fp16_resume_restores_the_gradient_scaler(tmp_path):
    # before: the scaler's loss scale and growth counter restarted after a resume
    X, y = _images()
    reference = _resumable(precision="fp16").fit(X, y)
    resumed, saved = _kill_and_resume(tmp_path, 2, precision="fp16")
    assert saved["grad_scaler"]["scale"] > 0
    assert resumed.net_.grad_scaler_.state_dict() == reference.net_.grad_scaler_.state_dict()
    _assert_same_run(resumed, reference)


def test_default_recipe_schedule_resumes_exactly(tmp_path):
    # lr_schedule="onecycle" (the default, a per-batch schedule over the phase after
    # warm-up) restarts at the unfreeze; a kill on either side of it resumes exactly
    X, y = _images()
    kw = dict(lr_schedule="onecycle", callbacks=[_KillAfterEpoch()])
    reference = _resumable(**kw).fit(X, y)
    for after in (1, 3):
        folder = tmp_path / str(after)
        resumed, _ = _kill_and_resume(folder, after, **kw)
        _assert_same_history(_history(resumed), _history(reference))
        _assert_same_weights(resumed, reference)


# --------------------------------------------------------------------------- unfreeze="auto"


class _KillRefitAfterEpoch(Callback):
    """Raises _Killed in the refit of unfreeze="auto" (the fit without a hold-out) at the
    start of the epoch after ``_KILL["refit_after"]``; the trials (with one) run through."""

    def on_epoch_begin(self, net, **kwargs):
        if net.train_split is not None:
            return
        _KILL["refit_epochs"] = _KILL.get("refit_epochs", 0) + 1
        after = _KILL.get("refit_after")
        if after is not None and len(net.history) == after + 1:
            raise _Killed


def _auto(folder):
    return _fit_clf(
        unfreeze="auto",
        validation_split=0.25,
        max_epochs=3,
        precision="fp32",
        callbacks=[_KillRefitAfterEpoch()],
        checkpoint_dir=str(folder),
    )


def test_auto_checkpoints_only_the_refit_and_a_killed_refit_resumes_exactly(tmp_path):
    X, y = _images()
    reference = _auto(tmp_path / "reference").fit(X, y)
    assert len(reference.unfreeze_scores_) == 2  # the trials ran ...
    (path,) = _files(tmp_path / "reference")  # ... and wrote no checkpoint
    assert torch.load(path, weights_only=True)["finished"]
    _KILL["refit_after"] = 1
    try:
        with pytest.raises(_Killed):
            _auto(tmp_path / "killed").fit(X, y)
    finally:
        _KILL["refit_after"] = None
    saved = _saved(tmp_path / "killed")
    assert len(saved["history"]) == 1 and not saved["finished"]
    _KILL["refit_epochs"] = 0
    resumed = _auto(tmp_path / "killed").fit(X, y)
    assert _KILL["refit_epochs"] == 2  # the refit resumed after its first epoch
    assert resumed.unfreeze_ == reference.unfreeze_
    _assert_same_history(_history(resumed), _history(reference))
    _assert_same_weights(resumed, reference)
    assert _saved(tmp_path / "killed")["finished"]
