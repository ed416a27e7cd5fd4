"""OneCycle, CyclicLR, CosineRestarts, Warmup, Sequential: closed-form values at boundaries."""

import math

import numpy as np
import optax
import pytest
from conftest import loss_fn, make_state
from test_tensorboard import read_scalars

from flax_lr_callbacks import (CosineRestarts, CyclicLR, LearningRateMonitor, LRSchedule,
                               OneCycle, Sequential, TensorBoardLogger, Trainer, Warmup,
                               injectable, preview)
from flax_lr_callbacks import schedules


def cos_anneal(start, end, pct):
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def at(curve, steps):
    return [float(curve[s]) for s in steps]


# ----------------------------------------------------------------------------- OneCycle
def test_one_cycle_two_phase_boundaries():
    """T=100, pct 0.3: start max/25, peak at step 29, end max/25/1e4 at 99, held after."""
    c = OneCycle(1.0).curve(130, hparams={"learning_rate": 0.1, "momentum": 0.9})
    lr, m = c["learning_rate"], c["momentum"]
    # total_steps=None takes the planned 130 steps: peak at 0.3*130-1 = 38
    c100 = OneCycle(1.0, total_steps=100).curve(100)
    lr100 = c100["learning_rate"]
    np.testing.assert_allclose(at(lr100, [0, 29, 99]), [0.04, 1.0, 4e-6], rtol=1e-5)
    np.testing.assert_allclose(lr100[64], cos_anneal(1.0, 4e-6, 0.5), rtol=1e-5)
    np.testing.assert_allclose(lr100[14], cos_anneal(0.04, 1.0, 14 / 29), rtol=1e-5)
    np.testing.assert_allclose(at(c100["momentum"], [0, 29, 99]), [0.95, 0.85, 0.95], rtol=1e-6)
    assert int(np.argmax(lr)) == 38 and lr[-1] == pytest.approx(4e-6, rel=1e-4)
    np.testing.assert_allclose(m[38], 0.85, rtol=1e-6)


def test_one_cycle_holds_final_value_beyond_total():
    """Past total_steps the last value is held (PyTorch raises)."""
    lr = np.asarray(schedules.one_cycle(np.arange(100, 120), total_steps=100, max_value=1.0))
    np.testing.assert_allclose(lr, 4e-6, rtol=1e-4)


def test_one_cycle_three_phase_linear():
    """Three phases, linear: initial@0, max@24, initial@48, min@99; halfway points exact."""
    lr = OneCycle(1.0, total_steps=100, pct_start=0.25, anneal_strategy="linear",
                  three_phase=True, cycle_momentum=False).curve(100)["learning_rate"]
    np.testing.assert_allclose(at(lr, [0, 12, 24, 36, 48, 99]),
                               [0.04, 0.52, 1.0, 0.52, 0.04, 4e-6], rtol=1e-5)
    np.testing.assert_allclose(lr[48 + 51 // 2], 0.04 + (4e-6 - 0.04) * (25 / 51), rtol=1e-5)


def test_one_cycle_epoch_unit():
    """unit='epoch': constant within an epoch, following the 5-epoch cycle."""
    lr = OneCycle(1.0, unit="epoch", pct_start=0.4,
                  cycle_momentum=False).curve(50, steps_per_epoch=10)["learning_rate"]
    per_epoch = [float(schedules.one_cycle(e, total_steps=5, max_value=1.0, pct_start=0.4))
                 for e in range(5)]
    np.testing.assert_allclose(lr, np.repeat(per_epoch, 10), rtol=1e-6)
    assert per_epoch[1] == pytest.approx(1.0)  # peak at epoch 0.4*5-1 = 1


def test_one_cycle_writes_b1_for_adam(data, tmp_path):
    """Adam-family optimizers get b1 cycled; the monitor logs it."""
    state = make_state(injectable(optax.adam, learning_rate=1e-3))
    mon = LearningRateMonitor()
    Trainer(loss_fn, max_epochs=2, callbacks=[OneCycle(0.01), mon],
            enable_progress_bar=False).fit(state, data[0])
    b1 = np.array(mon.history["b1"][1])
    expected = OneCycle(0.01).curve(12, hparams={"learning_rate": 1e-3, "b1": 0.9})["b1"]
    np.testing.assert_allclose(b1, expected, rtol=1e-6)
    np.testing.assert_allclose([b1[0], b1[-1]], [0.95, 0.95], rtol=1e-6)


def test_one_cycle_without_momentum_says_so(data):
    """Plain SGD (no momentum injected) with cycle_momentum=True is a clear error."""
    state = make_state(injectable(optax.sgd, learning_rate=0.1))
    with pytest.raises(ValueError, match=r"neither 'momentum' nor 'b1'.*cycle_momentum=False"):
        Trainer(loss_fn, callbacks=[OneCycle(0.1)], enable_progress_bar=False).fit(
            state, data[0])


def test_one_cycle_max_lr_none_needs_a_finder(data, state):
    """max_lr=None with nothing to set it fails before the first step."""
    with pytest.raises(ValueError, match=r"max_lr=None.*LRFinder"):
        Trainer(loss_fn, callbacks=[OneCycle(None)], enable_progress_bar=False).fit(
            state, data[0])


# ----------------------------------------------------------------------------- CyclicLR
def test_cyclic_triangular_boundaries():
    """base 0.1, max 1, up 4, down 6: rise to step 4, fall to step 10, repeat."""
    c = CyclicLR(0.1, 1.0, step_size_up=4, step_size_down=6).curve(21)
    np.testing.assert_allclose(at(c["learning_rate"], [0, 2, 4, 7, 10, 14, 20]),
                               [0.1, 0.55, 1.0, 0.55, 0.1, 1.0, 0.1], rtol=1e-6)
    np.testing.assert_allclose(at(c["momentum"], [0, 4, 7, 10]), [0.9, 0.8, 0.85, 0.9],
                               rtol=1e-6)


def test_cyclic_triangular2_and_exp_range():
    """triangular2 halves the amplitude each cycle; exp_range scales by gamma**step."""
    lr2 = CyclicLR(0.1, 1.0, step_size_up=5, mode="triangular2",
                   cycle_momentum=False).curve(31)["learning_rate"]
    np.testing.assert_allclose(at(lr2, [5, 15, 25]), [1.0, 0.55, 0.325], rtol=1e-6)
    lre = CyclicLR(0.1, 1.0, step_size_up=5, mode="exp_range", gamma=0.9,
                   cycle_momentum=False).curve(16)["learning_rate"]
    np.testing.assert_allclose(at(lre, [5, 15]), [0.1 + 0.9 * 0.9 ** 5, 0.1 + 0.9 * 0.9 ** 15],
                               rtol=1e-5)


def test_cyclic_custom_scale_fn():
    """A jit-able scale_fn of the cycle number replaces the mode."""
    lr = CyclicLR(0.0, 1.0, step_size_up=2, scale_fn=lambda c: 1.0 / c,
                  cycle_momentum=False).curve(11)["learning_rate"]
    np.testing.assert_allclose(at(lr, [2, 6, 10]), [1.0, 0.5, 1 / 3], rtol=1e-6)


# ----------------------------------------------------------------------------- CosineRestarts
def test_restarts_integer_t_mult():
    """t_0=10, t_mult=2: restarts at 10 and 30; half-way values exact."""
    lr = CosineRestarts(10, t_mult=2, base_lr=1.0).curve(40)["learning_rate"]
    np.testing.assert_allclose(at(lr, [0, 5, 9, 10, 20, 29, 30]),
                               [1.0, 0.5, (1 + math.cos(math.pi * 0.9)) / 2, 1.0, 0.5,
                                (1 + math.cos(math.pi * 19 / 20)) / 2, 1.0], rtol=1e-5,
                               atol=1e-7)


def test_restarts_float_t_mult_decay_limit_and_floor():
    """t_mult=1.5 restarts at 10, 25, 47.5; peaks decay; after max_cycles, eta_min."""
    lr = CosineRestarts(10, t_mult=1.5, eta_min=0.1, peak_decay=0.5, max_cycles=3,
                        base_lr=1.0).curve(60)["learning_rate"]
    np.testing.assert_allclose(at(lr, [0, 10, 25, 47]),
                               [1.0, 0.5, 0.25, 0.1 + (0.25 - 0.1) *
                                (1 + math.cos(math.pi * 22 / 22.5)) / 2], rtol=1e-5)
    np.testing.assert_allclose(lr[48:], 0.1, rtol=1e-6)


def test_restarts_warmup_and_optimizer_base():
    """warmup ramps 0 -> peak, then restarts begin; base_lr=None reads the optimizer's LR."""
    lr = CosineRestarts(10, warmup_steps=4).curve(
        20, hparams={"learning_rate": 0.3})["learning_rate"]
    np.testing.assert_allclose(at(lr, [0, 2, 4, 9, 14]), [0.0, 0.15, 0.3, 0.15, 0.3], rtol=1e-5)


# ----------------------------------------------------------------------------- composites
def test_warmup_in_front_of_one_cycle():
    """Warmup 10 then OneCycle over the remaining 100 steps, momentum shifted in time."""
    c = Warmup(OneCycle(1.0), warmup_steps=10).curve(110)
    lr = c["learning_rate"]
    np.testing.assert_allclose(at(lr, [0, 5, 10, 39, 109]), [0.0, 0.02, 0.04, 1.0, 4e-6],
                               rtol=1e-5)
    np.testing.assert_allclose(at(c["momentum"], [0, 10, 39]), [0.95, 0.95, 0.85], rtol=1e-6)


def test_sequential_joins_with_restarted_clocks():
    """Constant for 20 steps, then a OneCycle over the remaining 100 steps."""
    c = Sequential([LRSchedule(optax.constant_schedule(0.1)), OneCycle(1.0)],
                   boundaries=[20]).curve(120)
    np.testing.assert_allclose(at(c["learning_rate"], [0, 19, 20, 49, 119]),
                               [0.1, 0.1, 0.04, 1.0, 4e-6], rtol=1e-5)
    np.testing.assert_allclose(at(c["momentum"], [0, 19, 20, 49]), [0.9, 0.9, 0.95, 0.85],
                               rtol=1e-6)


def test_sequential_epoch_boundaries():
    """unit='epoch' boundaries are in epochs."""
    lr = Sequential([LRSchedule(optax.constant_schedule(1.0)),
                     LRSchedule(optax.constant_schedule(0.5))], boundaries=[2],
                    unit="epoch").curve(40, steps_per_epoch=10)["learning_rate"]
    np.testing.assert_allclose(lr, [1.0] * 20 + [0.5] * 20)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("make, match", [
    (lambda: OneCycle(-1.0), r"max_lr must be in \(0, inf\], got max_lr=-1.0"),
    (lambda: OneCycle(0.1, pct_start=1.3), r"pct_start must be in \(0, 1\), got pct_start=1.3"),
    (lambda: OneCycle(0.1, pct_start=0), r"pct_start must be in \(0, 1\)"),
    (lambda: OneCycle(0.1, div_factor=0), r"div_factor must be in \(0, inf\]"),
    (lambda: OneCycle(0.1, final_div_factor=-2), r"final_div_factor must be in \(0, inf\]"),
    (lambda: OneCycle(0.1, total_steps=1), r"total_steps must be in \[2, inf\]"),
    (lambda: OneCycle(0.1, anneal_strategy="exp"), r"anneal_strategy must be one of \['cos', 'linear'\]"),
    (lambda: OneCycle(0.1, max_momentum=1.0), r"max_momentum must be in \[0, 1\)"),
    (lambda: OneCycle(0.1, base_momentum=0.99), r"base_momentum must be in \[0, 0.95\]"),
    (lambda: OneCycle(0.1, unit="batch"), r"unit must be one of \['step', 'epoch'\]"),
    (lambda: CyclicLR(0.1, 0.05), r"max_lr must be in \(0.1, inf\], got max_lr=0.05"),
    (lambda: CyclicLR(-0.1, 0.05), r"base_lr must be in \[0, inf\]"),
    (lambda: CyclicLR(0.1, 1.0, step_size_up=0), r"step_size_up must be in \[1, inf\]"),
    (lambda: CyclicLR(0.1, 1.0, step_size_down=0), r"step_size_down must be in \[1, inf\]"),
    (lambda: CyclicLR(0.1, 1.0, mode="sine"), r"mode must be one of \['triangular', 'triangular2', 'exp_range'\]"),
    (lambda: CyclicLR(0.1, 1.0, gamma=1.5), r"gamma must be in \(0, 1\]"),
    (lambda: CyclicLR(0.1, 1.0, scale_mode="epoch"), r"scale_mode must be one of \['cycle', 'iterations'\]"),
    (lambda: CosineRestarts(0), r"t_0 must be in \[1, inf\], got t_0=0"),
    (lambda: CosineRestarts(10, t_mult=0.5), r"t_mult must be in \[1, inf\]"),
    (lambda: CosineRestarts(10, eta_min=-1), r"eta_min must be in \[0, inf\]"),
    (lambda: CosineRestarts(10, peak_decay=0), r"peak_decay must be in \(0, 1\]"),
    (lambda: CosineRestarts(10, max_cycles=0), r"max_cycles must be in \[1, inf\]"),
    (lambda: CosineRestarts(10, warmup_steps=-1), r"warmup_steps must be in \[0, inf\]"),
    (lambda: CosineRestarts(10, eta_min=0.5, base_lr=0.1), r"base_lr must be in \(0.5, inf\]"),
    (lambda: Warmup(OneCycle(0.1), warmup_steps=0), r"warmup_steps must be in \[1, inf\]"),
    (lambda: Sequential([OneCycle(0.1)], boundaries=[]), r"at least 2 callbacks"),
    (lambda: Sequential([OneCycle(0.1), OneCycle(0.1)], boundaries=[3, 4]),
     r"boundaries needs len\(schedules\) - 1 = 1 entries"),
    (lambda: Sequential([OneCycle(0.1)] * 3, boundaries=[5, 5]), r"strictly increasing"),
])
def test_constructor_validation(make, match):
    """Every bad argument is named with its value and the allowed range or options."""
    with pytest.raises(ValueError, match=match):
        make()


def test_composites_need_schedule_callbacks():
    """Warmup/Sequential refuse non-schedule callbacks."""
    with pytest.raises(TypeError, match="schedule callback"):
        Warmup(LearningRateMonitor(), warmup_steps=3)


# ----------------------------------------------------------------------------- preview
def test_preview_fails_fast_on_short_schedule(tmp_path):
    """A OneCycle shorter than the planned run is refused, naming both numbers."""
    with pytest.raises(ValueError, match=r"total_steps=50 steps but the run plans 100"):
        preview([OneCycle(0.1, total_steps=50)], steps_per_epoch=10, max_epochs=10)


def test_preview_values_and_png(tmp_path):
    """preview returns the per-step values and draws LR and momentum panels."""
    import matplotlib.image

    path = tmp_path / "plan.png"
    values = preview([Warmup(OneCycle(0.1), 5)], steps_per_epoch=10, max_epochs=3, path=path)
    assert values["learning_rate"].shape == (30,) and values["momentum"].shape == (30,)
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 600  # two stacked panels


# ----------------------------------------------------------------------------- through fit
def test_fit_follows_curve_with_every_schedule_one_compile(data, state, tmp_path):
    """TensorBoard lr/momentum equal .curve() at every step for a chain of all schedules."""
    train, val = data
    sched = Sequential(
        [Warmup(OneCycle(0.2, total_steps=20), warmup_steps=4),
         CyclicLR(0.01, 0.1, step_size_up=3),
         CosineRestarts(t_0=4, t_mult=1.5, peak_decay=0.8)],
        boundaries=[24, 36])
    trainer = Trainer(loss_fn, max_epochs=8, log_every_n_steps=7,
                      callbacks=[sched, LearningRateMonitor()],
                      logger=TensorBoardLogger(tmp_path), enable_progress_bar=False)
    trainer.fit(state, train, val)
    expected = sched.curve(48, steps_per_epoch=6, hparams={"learning_rate": 0.1, "momentum": 0.9})
    scalars = read_scalars(tmp_path / "version_0")
    assert scalars["lr"][0] == list(range(48))
    np.testing.assert_allclose(scalars["lr"][1], expected["learning_rate"], rtol=1e-6)
    np.testing.assert_allclose(scalars["momentum"][1], expected["momentum"], rtol=1e-6)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1


def test_schedule_parameters_are_state(data, state):
    """Changing OneCycle's max_lr and total_steps between fits: no new compile, new curve."""
    cb, mon = OneCycle(0.1), LearningRateMonitor()
    trainer = Trainer(loss_fn, max_epochs=2, callbacks=[cb, mon], enable_progress_bar=False)
    trainer.fit(state, data[0])
    np.testing.assert_allclose(mon.history["lr"][1], OneCycle(0.1).curve(12)["learning_rate"],
                               rtol=1e-6)
    cb.max_lr, cb.total_steps, trainer.max_epochs = 0.5, 30, 3
    trainer.fit(state, data[0])
    np.testing.assert_allclose(mon.history["lr"][1],
                               OneCycle(0.5, total_steps=30).curve(18)["learning_rate"],
                               rtol=1e-6)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1


def test_set_peak_reaches_nested_child(data, state):
    """set_peak on a composite writes the nested child's device state, no retrace."""
    inner = OneCycle(None)
    sched = Warmup(inner, warmup_steps=2)
    sched.set_peak(None, 0.3)  # before fit: taken at init
    mon = LearningRateMonitor()

    class LowerPeakAfterEpoch(LRSchedule.__mro__[1]):
        def on_train_epoch_end(self, trainer, st):
            sched.set_peak(trainer, 0.05)

    trainer = Trainer(loss_fn, max_epochs=2, callbacks=[sched, LowerPeakAfterEpoch(), mon],
                      enable_progress_bar=False)
    trainer.fit(state, data[0])
    lr = np.array(mon.history["lr"][1])
    assert lr[:6].max() == pytest.approx(0.3 * OneCycle(1.0, total_steps=10).curve(10)[
        "learning_rate"][:4].max(), rel=1e-5)
    assert lr[6:].max() <= 0.05 + 1e-7
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1


def test_preview_refuses_two_setters_like_fit():
    """preview raises the same conflict error as Trainer.fit for two LR setters."""
    with pytest.raises(ValueError, match=r"both set 'learning_rate'"):
        preview([LRSchedule(optax.constant_schedule(0.1)), OneCycle(0.1)], steps_per_epoch=5,
                max_epochs=2)
