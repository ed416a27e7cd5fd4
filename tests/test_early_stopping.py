"""EarlyStopping: Lightning's decision at its boundaries, through `fit`, with plateau, on
resume; and monitors that can never appear are errors."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Crash, CrashAt, loss_fn, make_state

from flax_lr_callbacks import (Callback, EarlyStopping, LRCallbacks, ModelCheckpoint,
                               ReduceLROnPlateau, Trainer)

NAN = math.nan


class Feed(Callback):
    """Puts ``score = values[epoch]`` into callback_metrics at each epoch end (before the
    callbacks after it in the list look)."""

    def __init__(self, values):
        self.values = values

    def on_train_epoch_end(self, trainer, state):
        trainer.callback_metrics["score"] = self.values[trainer.current_epoch]


def run(values, stop, *, extra=(), data=None, **kw):
    """Fits over `values` (one per epoch) with `stop` watching ``score``; returns the trainer."""
    trainer = Trainer(loss_fn, max_epochs=len(values), enable_progress_bar=False,
                      callbacks=[Feed(values), *extra, stop], **kw)
    trainer.fit(make_state(), data)
    return trainer


def stops_after(values, **kwargs):
    """The 0-based check at which `evaluate` first says stop (None if never)."""
    stop = EarlyStopping("score", **kwargs)
    for i, v in enumerate(values):
        if stop.evaluate(v)[0]:
            return i
    return None


@pytest.mark.parametrize("values, kwargs, expected, why", [
    ([3, 2, 2, 2], dict(patience=2), 3, "patience 2: the 2nd bad check stops"),
    ([3, 2, 2], dict(patience=2), None, "one bad check of 2 allowed"),
    ([3, 2, 2], dict(patience=0), 2, "patience 0: the first non-improving check stops"),
    ([3, 2.5, 2.0, 1.6], dict(patience=1, min_delta=0.5), 1,
     "min_delta 0.5: exactly 0.5 better is not an improvement"),
    ([3, 2.4, 1.8, 1.2], dict(patience=1, min_delta=0.5), None, "0.6 better each time"),
    ([1, 2, 3, 3], dict(patience=1, mode="max"), 3, "mode max: rising improves"),
    ([1, 2, 3], dict(patience=1, mode="max", min_delta=1), 1, "max with min_delta 1"),
    ([3, 2, 1.0, 0.9], dict(patience=5, stopping_threshold=1.0), 3,
     "stopping_threshold is strict: 1.0 is not < 1.0, 0.9 is"),
    ([3, 2, 5.0, 5.1], dict(patience=5, divergence_threshold=5.0), 3,
     "divergence_threshold is strict: 5.0 is not > 5.0"),
    ([0.5, 0.7], dict(patience=5, mode="max", stopping_threshold=0.6), 1, "max goal"),
    ([3, NAN], dict(patience=5), 1, "check_finite: NaN stops at once"),
    ([3, math.inf], dict(patience=5), 1, "inf stops too"),
    ([3, 2, 1.5, 1.6], dict(patience=3, baseline=1.0), 3,
     "baseline: improvements short of it add to the wait (but never stop themselves)"),
    ([3, 2, 1.5, 1.2], dict(patience=2, baseline=1.0), None, "an improvement never stops"),
    ([3, 2, 0.9, 0.95, 0.95], dict(patience=3, baseline=1.0), None,
     "beating the baseline resets the wait"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_decision_table(values, kwargs, expected, why):
    """evaluate(): Lightning's order (finite, goal, divergence, improvement, patience)."""
    assert stops_after(values, **kwargs) == expected, why


def test_stop_through_fit_names_reason():
    """Stops after `patience` bad epochs; stopped_epoch, stopped_step and reason say why."""
    stop = EarlyStopping("score", patience=2)
    trainer = run([3, 2, 2.5, 2.1, 1, 0], stop, data=_data())
    assert trainer.current_epoch == 3 and trainer.global_step == 24
    assert (stop.stopped_epoch, stop.stopped_step, stop.wait_count) == (3, 24, 2)
    assert stop.best_score == 2 and "did not improve in the last 2 checks" in stop.reason


def test_check_finite_false_skips_nan_with_warning():
    """check_finite=False: a NaN check is skipped with a warning, not counted as bad."""
    stop = EarlyStopping("score", patience=1, check_finite=False)
    with pytest.warns(RuntimeWarning, match=r"EarlyStopping ignores score=nan at step 12"):
        trainer = run([3, NAN, 2, 2, 2], stop, data=_data())
    assert stop.stopped_epoch == 3 and trainer.current_epoch == 3


def test_start_from_epoch_and_step_checks():
    """start_from_epoch skips early checks; an int check_on checks at log points."""
    stop = EarlyStopping("train_loss", patience=0, check_on=4, start_from_epoch=1,
                         stopping_threshold=10.0)  # any loss is below 10: stop at 1st check
    trainer = Trainer(loss_fn, max_epochs=5, log_every_n_steps=2, enable_progress_bar=False,
                      callbacks=[stop])
    trainer.fit(make_state(), _data())
    assert stop.stopped_step == 8 and trainer.global_step == 8  # steps 4 (epoch 0) skipped
    assert "stopping threshold reached: train_loss=" in stop.reason


def test_plateau_reduces_first_then_stops():
    """ReduceLROnPlateau and EarlyStopping on one monitor: the LR drops first, the fit stops
    later, and the epoch end after the stop still runs (checkpoints see it)."""
    plateau = ReduceLROnPlateau("score", patience=0, factor=0.5, check_on="epoch")
    stop = EarlyStopping("score", patience=3)
    trainer = run([1, 1, 1, 1, 1, 1, 1, 1], stop, extra=[plateau], data=_data())
    assert [r["epoch"] for r in plateau.reductions] == [1, 2, 3]
    assert stop.stopped_epoch == 3 and trainer.current_epoch == 3


def test_resume_is_bitwise_and_continues_the_wait(tmp_path):
    """A run resumed from a checkpoint stops at the same step with the same params."""
    values = [3, 2, 2.5, 2.2, 2.1, 2.3, 1, 0]

    def fit(callbacks, **kw):
        trainer = Trainer(loss_fn, max_epochs=len(values), enable_progress_bar=False,
                          callbacks=callbacks)
        return trainer, trainer.fit(make_state(), _data(), **kw)

    stop_full = EarlyStopping("score", patience=3)
    full_trainer, full = fit([Feed(values), stop_full])
    assert stop_full.stopped_epoch == 4
    with pytest.raises(Crash):
        fit([Feed(values), EarlyStopping("score", patience=3), CrashAt(16),
             ModelCheckpoint(tmp_path / "c", async_save=False)])
    stop = EarlyStopping("score", patience=3)
    trainer, out = fit([Feed(values), stop, ModelCheckpoint(tmp_path / "c")],
                       resume_from="latest")
    assert trainer.start_step == 12
    assert (stop.stopped_epoch, stop.stopped_step, stop.wait_count, stop.best_score) == (
        stop_full.stopped_epoch, stop_full.stopped_step, 3, 2)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_state_dict_roundtrip():
    """state_dict/load_state_dict restore every decision field."""
    a = EarlyStopping("score", patience=4)
    for v in [3, 2, 2.5]:
        a.evaluate(v)
    b = EarlyStopping("score", patience=4)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() and b.wait_count == 1 and b.best_score == 2


@pytest.mark.parametrize("make", [
    lambda: EarlyStopping(),
    lambda: ReduceLROnPlateau(),
    lambda: EarlyStopping("train_loss", check_on="validation"),
    lambda: ReduceLROnPlateau("val_acc", check_on=3),
])
def test_monitor_that_cannot_appear_is_an_error_at_fit_start(make):
    """A val_* monitor, or check_on='validation', in a fit without val_data: ValueError
    before the first step."""
    trainer = Trainer(loss_fn, max_epochs=2, enable_progress_bar=False, callbacks=[make()])
    with pytest.raises(ValueError, match=r"no val_data") as info:
        trainer.fit(make_state(), _data())
    assert trainer.global_step == 0 and type(make()).__name__ in str(info.value)


@pytest.mark.parametrize("make", [lambda: EarlyStopping("train_los"),
                                  lambda: ReduceLROnPlateau("acc", check_on="epoch")])
def test_unknown_monitor_raises_listing_available(make):
    """A monitor that is not among the metrics at the first check: KeyError listing them."""
    trainer = Trainer(loss_fn, max_epochs=2, enable_progress_bar=False, callbacks=[make()])
    with pytest.raises(KeyError, match=r"available metrics: \['train_acc', 'train_loss'\]"):
        trainer.fit(make_state(), _data())
    assert trainer.global_step == 6


def test_val_monitor_checked_by_steps_waits_for_validation():
    """A val_* monitor checked every N steps skips checks before the first validation."""
    stop = EarlyStopping("val_loss", patience=0, check_on=2, divergence_threshold=0.0)
    trainer = Trainer(loss_fn, max_epochs=3, log_every_n_steps=2, enable_progress_bar=False,
                      callbacks=[stop])
    d = _data()
    trainer.fit(make_state(), d, d)
    assert stop.stopped_step == 8  # the first check after epoch 0's validation (at step 6)


def test_dropin_unknown_validation_warns_once():
    """In LRCallbacks (validation unknown), a missing val_* monitor warns once, then waits."""
    stop = EarlyStopping(check_on="epoch")
    lrc = LRCallbacks([stop], steps_per_epoch=2, total_steps=6)
    state = make_state()
    lr_state = lrc.init(state.opt_state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            lr_state = lrc.epoch_end(lr_state, {"train_loss": 1.0})
    assert len(caught) == 1 and "'val_loss'" in str(caught[0].message)
    lr_state = lrc.epoch_end(lr_state, {"val_loss": jnp.float32(NAN)})
    assert stop.stopped_epoch == 2 and "not finite" in stop.reason


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_delta=-0.1), r"min_delta must be in \[0, inf\], got min_delta=-0.1"),
    (dict(patience=-1), r"patience must be an int >= 0, got patience=-1"),
    (dict(patience=True), r"patience must be an int >= 0, got patience=True"),
    (dict(mode="mx"), r"mode must be one of \['min', 'max'\], got mode='mx'"),
    (dict(check_on=0), r"check_on must be 'validation', 'epoch' or an int >= 1"),
    (dict(stopping_threshold=float("nan")), r"stopping_threshold must be a finite number"),
    (dict(stopping_threshold=2.0, divergence_threshold=1.0), r"stopping_threshold=2.0 must"),
    (dict(start_from_epoch=1.5), r"start_from_epoch must be an int >= 0"),
    (dict(check_finite="yes"), r"check_finite must be a bool"),
    (dict(monitor=None), r"monitor must be a non-empty str"),
])
def test_bad_arguments_named(kwargs, match):
    """Each bad argument is refused with its name and value."""
    with pytest.raises((ValueError, TypeError), match=match):
        EarlyStopping(**kwargs)


def test_numpy_scalars_accepted():
    """NumPy scalars are accepted where numbers are meant."""
    stop = EarlyStopping(patience=np.int64(2), min_delta=np.float32(0.5),
                         start_from_epoch=np.int32(1), stopping_threshold=np.float64(0.1))
    assert (stop.patience, stop.min_delta, stop.start_from_epoch) == (2, 0.5, 1)
    assert type(stop.patience) is int and type(stop.min_delta) is float


def _data():
    from flax_lr_callbacks import ArrayDataset
    from conftest import make_data

    return ArrayDataset(make_data(), 16, seed=0)
