"""ReduceLROnPlateau: PyTorch's decision semantics, sign-safe thresholds, composition."""

import logging
import math

import numpy as np
import optax
import pytest
from conftest import loss_fn
from test_tensorboard import read_scalars

from flax_lr_callbacks import (LearningRateMonitor, LRSchedule, ReduceLROnPlateau,
                               TensorBoardLogger, Trainer)

NAN = float("nan")

# (kwargs, metric sequence, expected scale after each evaluation, why)
CASES = [
    (dict(patience=2, factor=0.5), [5, 4, 3, 2, 1], [1, 1, 1, 1, 1],
     "always improving: never reduces"),
    (dict(patience=2, factor=0.5), [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0.5, 0.5, 0.5, 0.25],
     "flat: first eval sets best, reduce on the 3rd (= patience+1) bad eval, counter resets"),
    (dict(patience=0, factor=0.5), [1, 1, 1], [1, 0.5, 0.25],
     "patience 0: every bad eval reduces"),
    (dict(patience=0, factor=0.5, cooldown=2), [1, 1, 1, 1, 1, 1],
     [1, 0.5, 0.5, 0.5, 0.25, 0.25],
     "cooldown 2: the two evals after a reduction are not counted as bad"),
    (dict(patience=1, factor=0.5, threshold=0.1), [-10, -10.5, -10.6], [1, 1, 0.5],
     "negative metric, rel 10%: -10.5 and -10.6 are not 10% better than -10 (PyTorch: better)"),
    (dict(patience=1, factor=0.5, threshold=0.1), [-10, -12, -12], [1, 1, 1],
     "negative metric: -12 beats -10 by more than 10%, so it improves"),
    (dict(patience=1, factor=0.5), [-5, -5, -5], [1, 1, 0.5],
     "flat negative metric reduces (PyTorch rel: -5 < -5*(1-1e-4) is 'better' forever)"),
    (dict(mode="max", patience=1, factor=0.5, threshold=0.5, threshold_mode="abs"),
     [1, 1.4, 2.0, 2.3, 2.4], [1, 1, 1, 1, 0.5],
     "max mode, abs 0.5: 1.4 and 2.3, 2.4 are not 0.5 above best"),
    (dict(mode="max", patience=0, factor=0.1, threshold=0.01), [0.5, 0.6, 0.6], [1, 1, 0.1],
     "max mode rel: 0.6 > 0.5*1.01 improves, the repeat does not"),
    (dict(patience=1, factor=0.5), [1, NAN, NAN, 2, 2], [1, 1, 1, 1, 0.5],
     "NaN is skipped: neither better nor bad (issue 14)"),
    (dict(patience=1, factor=0.5, threshold=0, threshold_mode="abs"), [1, 1, 0.999, 0.999, 0.999],
     [1, 1, 1, 1, 0.5], "abs threshold 0: any decrease improves, equal values do not"),
]


@pytest.mark.parametrize("kwargs, metrics, scales, why", CASES, ids=[c[3][:40] for c in CASES])
def test_decision_table(kwargs, metrics, scales, why):
    """update() gives PyTorch's scale sequence (sign-safe rel threshold)."""
    cb = ReduceLROnPlateau(**kwargs)
    state, got = cb.init(), []
    for value in metrics:
        state, _ = cb.update(state, value)
        got.append(state.scale)
    assert got == pytest.approx(scales), why


def test_min_lr_and_eps_skip_reductions():
    """Once the applied LR sits at min_lr (or would change <= eps), reductions are skipped."""
    cb = ReduceLROnPlateau(patience=0, factor=0.1, min_lr=0.01)
    s = cb.init()
    s, _ = cb.update(s, 1.0, current_lr=0.1)
    s, reduced = cb.update(s, 1.0, current_lr=0.1)   # 0.1 -> max(0.01, 0.01): reduces
    assert reduced and s.scale == pytest.approx(0.1)
    s, reduced = cb.update(s, 1.0, current_lr=0.01)  # already at the floor: skipped
    assert not reduced and s.scale == pytest.approx(0.1)
    cb = ReduceLROnPlateau(patience=0, factor=0.5, eps=1e-7)
    s, _ = cb.update(cb.init(), 1.0, current_lr=1e-7)
    s, reduced = cb.update(s, 1.0, current_lr=1e-7)  # 1e-7 -> 5e-8 changes by <= eps
    assert not reduced


def test_update_is_pure():
    """update() returns a new state and leaves the input untouched."""
    cb = ReduceLROnPlateau(patience=0)
    s0 = cb.init()
    s1, _ = cb.update(s0, 1.0)
    assert s0.best == math.inf and s1.best == 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(factor=1.0), r"factor must be in \(0, 1\), got factor=1.0"),
    (dict(factor=0), r"factor must be in \(0, 1\)"),
    (dict(patience=-1), r"patience must be in \[0, inf\]"),
    (dict(mode="minimum"), r"mode must be one of \['min', 'max'\]"),
    (dict(threshold=-0.1), r"threshold must be in \[0, inf\]"),
    (dict(threshold_mode="relative"), r"threshold_mode must be one of \['rel', 'abs'\]"),
    (dict(min_lr=-1), r"min_lr must be in \[0, inf\]"),
    (dict(eps=-1), r"eps must be in \[0, inf\]"),
    (dict(check_on="step"), r"check_on must be 'validation', 'epoch' or an int >= 1"),
    (dict(check_on=0), r"check_on must be"),
])
def test_validation(kwargs, match):
    """Bad arguments are named with their value and range."""
    with pytest.raises(ValueError, match=match):
        ReduceLROnPlateau(**kwargs)


def flat_metric(params, batch):
    return {"flat": 1.0}


def test_composes_with_warmup_cosine_through_fit(data, state, tmp_path, caplog):
    """Applied LR = schedule x scale at every step; one compile; TensorBoard shows it."""
    train, val = data
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.2, 4, 30, 0.01)
    plateau = ReduceLROnPlateau(monitor="val_flat", patience=0, factor=0.5)
    trainer = Trainer(loss_fn, max_epochs=5, log_every_n_steps=4, eval_fn=flat_metric,
                      callbacks=[LRSchedule(sched), plateau, LearningRateMonitor()],
                      logger=TensorBoardLogger(tmp_path), enable_progress_bar=False)
    with caplog.at_level(logging.INFO, logger="flax_lr_callbacks"):
        trainer.fit(state, train, val)
    # val after epoch 0 sets best; epochs 1, 2, 3 (and 4) are bad -> scale halves after each
    scale = np.repeat([1, 1, 0.5, 0.25, 0.125], 6)
    expected = np.array([float(sched(t)) for t in range(30)]) * scale
    lr = read_scalars(tmp_path / "version_0")["lr"][1]
    np.testing.assert_allclose(lr, expected, rtol=1e-6)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1
    assert [r["epoch"] for r in plateau.reductions] == [1, 2, 3, 4]
    assert "val_flat=1 did not improve" in caplog.text


def test_min_lr_floor_in_graph(data, state):
    """The reduced LR never goes below min_lr, and a schedule below min_lr is not raised."""
    plateau = ReduceLROnPlateau(monitor="val_flat", patience=0, factor=0.1, min_lr=0.02)
    mon = LearningRateMonitor()
    sched = optax.linear_schedule(0.0, 0.1, 12)  # starts below min_lr
    Trainer(loss_fn, max_epochs=4, eval_fn=flat_metric, enable_progress_bar=False,
            callbacks=[LRSchedule(sched), plateau, mon]).fit(state, *data)
    lr = np.array(mon.history["lr"][1])
    np.testing.assert_allclose(lr[:12], [float(sched(t)) for t in range(12)], rtol=1e-6)
    np.testing.assert_allclose(lr[12:], 0.02, rtol=1e-6)  # 0.1 * 0.1 floored at 0.02
    assert len(plateau.reductions) == 1  # the second reduction is skipped at the floor


def test_check_every_n_steps_on_train_metric(data, state):
    """check_on=N decides at log points every N steps from train metrics."""
    def const_loss(params, batch):
        loss, _ = loss_fn(params, batch)
        return loss, {"const": 1.0}

    plateau = ReduceLROnPlateau(monitor="train_const", patience=0, factor=0.5, check_on=4)
    mon = LearningRateMonitor()
    Trainer(const_loss, max_epochs=2, log_every_n_steps=2, enable_progress_bar=False,
            callbacks=[plateau, mon]).fit(state, data[0])
    assert [r["step"] for r in plateau.reductions] == [8, 12]  # checks at 4 (best), 8, 12
    lr = np.array(mon.history["lr"][1])
    np.testing.assert_allclose(lr, [0.1] * 8 + [0.05] * 4, rtol=1e-6)


def test_missing_metric_raises_with_available_names(data, state):
    """An absent monitor is a KeyError at the first check, listing the available names."""
    plateau = ReduceLROnPlateau(monitor="val_acc_typo", patience=0)
    trainer = Trainer(loss_fn, max_epochs=3, enable_progress_bar=False, callbacks=[plateau])
    with pytest.raises(KeyError, match=r"'val_acc_typo'.*step 6.*available metrics: \[.*'val_acc'"):
        trainer.fit(state, *data)


def test_fresh_state_per_fit_and_state_dict_roundtrip(data, state):
    """Two fits on one instance see the same decisions; state_dict restores every counter."""
    plateau = ReduceLROnPlateau(monitor="val_flat", patience=1, factor=0.5, cooldown=1)
    trainer = Trainer(loss_fn, max_epochs=5, eval_fn=flat_metric, enable_progress_bar=False,
                      callbacks=[plateau])
    trainer.fit(state, *data)
    first = [(r["epoch"], r["scale"]) for r in plateau.reductions]
    saved = plateau.state_dict()
    trainer.fit(state, *data)
    assert [(r["epoch"], r["scale"]) for r in plateau.reductions] == first and first
    other = ReduceLROnPlateau(monitor="val_flat", patience=1, factor=0.5, cooldown=1)
    other.load_state_dict(saved)
    assert other.state == plateau.state and other.reductions == plateau.reductions


def test_step_checks_of_a_val_monitor_count_each_validation_once(data, state):
    """check_on=N with a val_* monitor: a check between two validations would read the same
    value again; it is skipped, so only a new validation counts (Lightning counts it twice)."""
    plateau = ReduceLROnPlateau(monitor="val_flat", patience=0, factor=0.5, check_on=2)
    Trainer(loss_fn, max_epochs=4, log_every_n_steps=2, eval_fn=flat_metric,
            enable_progress_bar=False, callbacks=[plateau]).fit(state, *data)
    # validations after steps 6, 12, 18, 24: the first check after each counts (8 sets the
    # best, 14 and 20 are bad); checks at 2-6, 10-12, 16-18 and 22-24 see no new value
    assert [r["step"] for r in plateau.reductions] == [14, 20]
    saved = plateau.state_dict()
    assert saved["validations"] == 4 and saved["checked_validations"] == 3
    other = ReduceLROnPlateau(monitor="val_flat", patience=0, factor=0.5, check_on=2)
    other.load_state_dict(saved)
    assert other.check_state() == plateau.check_state()
